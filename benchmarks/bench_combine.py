"""Which eq. (25) combine? Train a 1-block MACTransformer per variant on a cross-segment recall task.

Task (vocabulary 16, segments of 8): a sequence is ``A | F | A`` with A and F random segments. In the
third segment the model sees ``A[0..i]`` and must predict ``A[i+1]``. Attention is segment-local, so
only the neural memory can carry A from segment 1 to segment 3; a model without memory stays at
chance (loss ln 16 = 2.77). Loss and accuracy are measured on those 7 recall predictions only.

For each combine variant ("gate", "sum", "mlp") and for ``use_memory=False``, several seeds, with
``MACConfig``'s defaults otherwise (so chapter 8's learned memory scale, initialised to 0, and the
memory step cap of 0.03 are in; each run's config is recorded), or with ``--as-written`` eq. (25)
exactly as the paper writes it and the memory's own cap of 0.1 (the settings the combine was first
chosen with, ``combine_experiment_as_written.json``); the
learning curves and a final evaluation on 512 held-out sequences go to
``book/results/combine_experiment.json`` (chapter 6 plots them).

    .venv/bin/python benchmarks/bench_combine.py                 # about 6 min on one CPU thread
    .venv/bin/python benchmarks/bench_combine.py --as-written
"""

import argparse
import dataclasses
import math
import pathlib
import platform
import time

import torch
import torch.nn.functional as F

from common import write_json
from mac_minimal.model import MACConfig, MACTransformer
from mac_minimal.neural_memory import NeuralMemoryConfig

VOCAB, SEGMENT = 16, 8
OUT = pathlib.Path(__file__).resolve().parents[1] / "book" / "results" / "combine_experiment.json"
OUT_AS_WRITTEN = OUT.with_name("combine_experiment_as_written.json")


def aba_batch(batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(b, 3 * SEGMENT) int64 sequences ``A | F | A``."""
    a = torch.randint(0, VOCAB, (batch_size, SEGMENT), generator=generator)
    filler = torch.randint(0, VOCAB, (batch_size, SEGMENT), generator=generator)
    return torch.cat((a, filler, a), dim=1)


def aba_loss(model: MACTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy of predicting ``A[i+1]`` from ``A[0..i]`` in the third segment."""
    logits, _ = model(x[:, :-1])
    logits, target = logits[:, 2 * SEGMENT:], x[:, 2 * SEGMENT + 1:]   # (b, 7, V), (b, 7)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
    return loss, (logits.argmax(-1) == target).double().mean()


# eq. (25) as the paper writes it, and chapter 4's memory step cap: the settings before chapter 8
AS_WRITTEN = {"memory_scale_init": None, "max_lr": 0.1}


def train_variant(combine: str, use_memory: bool, seed: int, steps: int, every: int, as_written: bool) -> dict:
    torch.manual_seed(seed)
    default = MACConfig()
    memory = NeuralMemoryConfig(chunk_size=4, max_lr=AS_WRITTEN["max_lr"] if as_written else default.memory.max_lr)
    scale_init = AS_WRITTEN["memory_scale_init"] if as_written else default.memory_scale_init
    config = MACConfig(vocab_size=VOCAB, dim=32, depth=1, heads=4, segment_len=SEGMENT, num_persistent=4,
                       combine=combine, use_memory=use_memory, memory_scale_init=scale_init, memory=memory)
    model = MACTransformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(1000 + seed)
    curve = []
    start = time.perf_counter()
    for step in range(steps):
        loss, _ = aba_loss(model, aba_batch(32, data))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps - 1:
            curve.append([step, round(loss.item(), 4)])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        loss, accuracy = aba_loss(model, aba_batch(512, torch.Generator().manual_seed(7)))
    return {"combine": combine, "use_memory": use_memory, "seed": seed, "config": dataclasses.asdict(config),
            "curve": curve,
            "eval_loss": round(loss.item(), 4), "eval_accuracy": round(accuracy.item(), 4),
            "train_seconds": round(seconds, 1), "parameters": model.num_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--as-written", action="store_true",
                        help=f"MAC as the paper writes it, {AS_WRITTEN}; writes {OUT_AS_WRITTEN.name}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = [("gate", True), ("sum", True), ("mlp", True), ("gate", False)]
    runs = []
    for combine, use_memory in variants:
        for seed in range(args.seeds):
            runs.append(train_variant(combine, use_memory, seed, args.steps, args.every, args.as_written))
            print(runs[-1]["combine"], use_memory, seed, runs[-1]["eval_loss"], runs[-1]["eval_accuracy"],
                  runs[-1]["train_seconds"], flush=True)
    out = OUT_AS_WRITTEN if args.as_written else OUT
    write_json(out, {
        "task": f"A | F | A, vocab {VOCAB}, segment {SEGMENT}; loss on the 7 recall predictions of segment 3",
        "chance_loss": round(math.log(VOCAB), 4),
        "steps": args.steps, "batch_size": 32, "lr": 3e-3, "threads": 1,
        "torch": torch.__version__, "machine": platform.machine(),
        "runs": runs})


if __name__ == "__main__":
    main()
