"""Forward + backward time of a small MACTransformer on CPU, against the same model without memory.

Three ways to run a batch of sequences through the model, all giving the same kind of logits:

* ``mac``: the MAC model (``use_memory=True``). Its segment loop is sequential: segment s
  retrieves from the memory segment s - 1 wrote, which needs segment s - 1's attention output.
* ``no_memory_folded``: ``use_memory=False``, one call: whole segments are folded into the batch
  (``b (s c) d -> (b s) c d``) and attended in one batched call.
* ``no_memory_loop``: the same memory-free model fed one segment per call with the state passed
  on: the sequential segment loop without the memory's work, to separate the two costs.

Two sweeps: sequence length n at a fixed segment length, and segment length at a fixed n.
Each time is the median over repeats, in seconds per step (:func:`common.median_seconds`); the
three kinds take turns inside every repeat, so that the ratios survive a shared, busy machine.
Results go to ``book/results/model_benchmark.json`` (chapter 7 plots them).

    .venv/bin/python benchmarks/bench_model.py          # a few minutes on one CPU thread
"""

import argparse
import dataclasses

import torch
import torch.nn.functional as F

from common import RESULTS, environment, mac_config, median_seconds, write_json
from mac_minimal.model import MACTransformer

OUT = RESULTS / "model_benchmark.json"
BASE = dict(vocab_size=256, dim=64, depth=2, heads=4, num_persistent=4, chunk_size=8)


def step(model: MACTransformer, tokens: torch.Tensor, per_segment: bool) -> None:
    """One forward + backward of the next-token loss, in one call or one call per segment."""
    if per_segment:
        c, state, pieces = model.config.segment_len, None, []
        for begin in range(0, tokens.shape[1] - 1, c):
            logits, state = model(tokens[:, begin:min(begin + c, tokens.shape[1] - 1)], state)
            pieces.append(logits)
        logits = torch.cat(pieces, dim=1)
    else:
        logits, _ = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()


KINDS = ("mac", "no_memory_folded", "no_memory_loop")


def timed(n: int, segment_len: int, batch_size: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of each kind at one size, the kinds taking turns in every repeat."""
    torch.manual_seed(0)
    models = {kind: MACTransformer(mac_config(segment_len=segment_len, use_memory=kind == "mac", **BASE))
              for kind in KINDS}
    tokens = torch.randint(0, BASE["vocab_size"], (batch_size, n + 1))

    def job(kind: str, model: MACTransformer):
        def run() -> None:
            model.zero_grad(set_to_none=True)
            step(model, tokens, kind == "no_memory_loop")
        return run

    seconds = median_seconds({kind: job(kind, model) for kind, model in models.items()}, repeats)
    return {kind: round(value, 5) for kind, value in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    by_length, by_segment = [], []
    for n in (64, 128, 256, 512):
        row = {"n": n, "segment_len": 16} | timed(n, 16, args.batch_size, args.repeats)
        by_length.append(row)
        print(row, flush=True)
    for c in (8, 16, 32, 64, 128):
        row = {"n": 256, "segment_len": c} | timed(256, c, args.batch_size, args.repeats)
        by_segment.append(row)
        print(row, flush=True)
    params = {k: MACTransformer(mac_config(segment_len=16, use_memory=k, **BASE)).num_parameters()
              for k in (True, False)}
    write_json(OUT, {
        "what": "seconds per forward+backward step (median over repeats, kinds interleaved), CPU, 1 thread",
        "config": dataclasses.asdict(mac_config(segment_len=16, **BASE)), "batch_size": args.batch_size,
        "repeats": args.repeats, "parameters": {"mac": params[True], "no_memory": params[False]},
        "environment": environment(), "by_length": by_length, "by_segment_len": by_segment})


if __name__ == "__main__":
    main()
