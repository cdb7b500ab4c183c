"""What a trained MAC's memory learned (chapter 8): its step sizes, its reads, and what breaks without it.

Loads the checkpoint of one recorded run of ``mac_trainability.py`` (default: MAC with both
trainability changes, one fact, seed 0, 2,500 steps) and measures on fresh recall batches:

* **rates by token**: the memory's data-dependent step size ``theta_t``, momentum ``eta_t`` and
  forgetting ``alpha_t`` (eq. 13-14's rates, computed from the attention output ``y`` it writes),
  averaged per token type (fact ``KEY k VALUE v``, query ``QUERY k VALUE``, filler), per layer,
  and ``theta_t`` along one whole stream;
* **attention on the retrieved tokens**: at the answer position, the share of eq. (23)'s attention
  weight on the persistent slots, on the retrieved tokens ``h`` and on the segment itself,
  against the distance to the fact, per layer; and the weights of the query's segment as maps;
* **retrieval error**: how close what the answer position retrieves, ``h = M*(q)`` (eq. 21), is to
  the value ``v_t`` the memory was given to store at each earlier token (eq. 11),
  ``|h - v_t|^2 / |v_t|^2``, for the fact's four tokens and on average for the filler, against the
  distance (the fact is retrieved if its value is closer than the filler's);
* **ablations at evaluation**: accuracy against distance when the memory is reset at every segment
  start (nothing carried across segments), when ``h`` is read from the fresh memory (no retrieved
  past in the attention) and when the memory term of eq. (25) is dropped (``s = 0``).

Writes ``book/results/trainability/what_memory_learned.json``.

    OMP_NUM_THREADS=1 python benchmarks/what_memory_learned.py
    python benchmarks/what_memory_learned.py --run runs/trainability/scale0-lr0.03-s0-2500steps
"""

import argparse
import contextlib
import pathlib
import sys

import torch

from common import RESULTS, environment, load_recall_run, write_json
from mac_minimal.data import KEY, QUERY, VALUE, TOKENS_PER_FACT, RecallTask, recall_batch, recall_distance_range
from mac_minimal.evaluation import evaluate_recall
from mac_minimal.inspect_memory import recorded
from mac_minimal.model import MACTransformer
from mac_minimal.train_config import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_RUN = ROOT / "runs" / "trainability" / "scale0-lr0.03-s0-2500steps"
MARKERS = {KEY: "KEY", VALUE: "VALUE", QUERY: "QUERY"}
TOKEN_TYPES = ("fact KEY", "fact key", "fact VALUE", "fact value", "query QUERY", "query key",
               "query VALUE", "filler")


def token_types(inputs: torch.Tensor, num_facts: int, task: RecallTask) -> list[list[str]]:
    """The type of every input token (b, n), from the layout of :func:`recall_batch`."""
    n = inputs.shape[1]
    query_start = n + 1 - TOKENS_PER_FACT * num_facts
    names = []
    for row in inputs.tolist():
        kinds = []
        for t, token in enumerate(row):
            where = "query" if t >= query_start else "fact"
            if token in MARKERS:
                kinds.append(f"{where} {MARKERS[token]}")
            elif token < task.value_start:
                kinds.append(f"{where} key")
            elif token < task.filler_start:
                kinds.append(f"{where} value")
            else:
                kinds.append("filler")
        names.append(kinds)
    return names


@contextlib.contextmanager
def ablated(model: MACTransformer, kind: str):
    """Evaluate with the memory cut: ``reset`` (fresh memory at every segment start), ``no_h``
    (retrieve h from the fresh memory), ``no_m`` (drop eq. 25's memory term)."""
    handles, scales = [], []
    for block in model.blocks:
        attn = block.attn

        def fresh(_m, args, attn=attn):
            x, state = args
            empty = attn.memory.init_state(x.shape[0])
            if kind == "reset" and state.filled == 0:
                return x, state._replace(memory_before=empty, memory=empty)
            if kind == "no_h":
                return x, state._replace(memory_before=empty)
            return None

        if kind == "no_m":
            if attn.memory_scale is None:
                raise SystemExit("no_m needs a model trained with a memory scale (--memory-scale-init)")
            scales.append(attn.memory_scale.data.clone())
            attn.memory_scale.data.zero_()
        else:
            handles.append(attn.register_forward_pre_hook(fresh))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for block, scale in zip(model.blocks, scales):
            block.attn.memory_scale.data.copy_(scale)


@torch.no_grad()
def rates_by_token(model: MACTransformer, cfg: TrainConfig, task: RecallTask, distance: int) -> dict:
    generator = torch.Generator().manual_seed(1234)
    batch = recall_batch(64, cfg.seq_len, distance, cfg.num_facts, generator, task)
    with recorded(model) as calls:
        model(batch.inputs)
    kinds = token_types(batch.inputs, cfg.num_facts, task)
    flat_kinds = [k for row in kinds for k in row]
    result = {"distance": distance, "tokens": kinds[0], "layers": []}
    for layer, block in enumerate(model.blocks):
        y = torch.cat(calls["y"][layer], dim=1)                          # (b, n, d)
        theta, eta, alpha = block.attn.memory.rates(y)                  # each (b, n)
        per_type = {}
        for name, rate in (("theta", theta), ("eta", eta), ("alpha", alpha)):
            values = rate.flatten().tolist()
            per_type[name] = {kind: sum(v for v, k in zip(values, flat_kinds) if k == kind)
                              / max(1, flat_kinds.count(kind)) for kind in TOKEN_TYPES}
        result["layers"].append({"by_type": per_type, "theta_stream": theta[0].tolist(),
                                 "max_lr": block.attn.memory.config.max_lr,
                                 "memory_scale": float(block.attn.memory_scale)})
    return result


@torch.no_grad()
def reads(model: MACTransformer, cfg: TrainConfig, task: RecallTask, distances: list[int],
          mapped: set[int]) -> dict:
    """Attention shares at the answer, attention maps, retrieval errors; one batch per distance."""
    n, f, P = cfg.seq_len, cfg.num_facts, model.config.num_persistent
    c = model.config.segment_len
    answer = n - 1                            # the last query's answer: its input is the VALUE marker
    segment_start = answer // c * c
    out = {"answer_position": answer, "shares": [{} for _ in model.blocks], "maps": [],
           "retrieval_error": [{} for _ in model.blocks]}
    for distance in distances:
        generator = torch.Generator().manual_seed(99 + distance)
        batch = recall_batch(64, n, distance, f, generator, task)
        with recorded(model) as calls:
            model(batch.inputs)
        fact_start = n + 1 - TOKENS_PER_FACT * f - distance
        kinds = token_types(batch.inputs, f, task)
        for layer, block in enumerate(model.blocks):
            x, state = calls["attn"][layer][-1]                         # the query's segment
            weights = block.attn.attention_weights(x, state)            # (b, h, c, P + c + c)
            row = weights[:, :, answer % c].mean(dim=(0, 1))            # (P + c + c,)
            out["shares"][layer][distance] = {"persistent": float(row[:P].sum()),
                                              "retrieved": float(row[P:P + c].sum()),
                                              "segment": float(row[P + c:].sum())}
            if distance in mapped:
                out["maps"].append({"layer": layer, "distance": distance,
                                    "weights": weights[0].mean(0).tolist()})
            if fact_start + TOKENS_PER_FACT * f > segment_start:
                continue                                  # the fact is in the query's segment: not written yet
            y = torch.cat(calls["y"][layer], dim=1)
            _, v = block.attn.memory.keys_values(y)                     # (b, n, d): what was written
            h = block.attn.retrieve(x, state)[:, answer % c]            # (b, d): what the answer reads
            error = ((h[:, None] - v) ** 2).sum(-1) / (v ** 2).sum(-1).clamp_min(1e-12)   # (b, n)
            fact = {name: float(error[:, fact_start + i].mean())
                    for i, name in enumerate(("KEY", "key", "VALUE", "value"))}
            filler = torch.tensor([[kind == "filler" for kind in row[:segment_start]] for row in kinds])
            out["retrieval_error"][layer][distance] = {**fact, "filler": float(error[:, :segment_start][filler].mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=pathlib.Path, default=DEFAULT_RUN, help="run directory with checkpoint.pt")
    parser.add_argument("--eval-batches", type=int, default=4)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "trainability" / "what_memory_learned.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, cfg, _ = load_recall_run(args.run)
    if cfg.model != "mac":
        raise SystemExit(f"{args.run} holds a {cfg.model!r} model, not mac")
    task = cfg.recall_task
    distances = cfg.eval_distances
    middle = max(d for d in distances if d <= cfg.seq_len // 2)           # the fact mid-stream
    low, high = recall_distance_range(cfg.seq_len, cfg.num_facts)
    more = sorted(set(distances) | {d for d in range(12, high + 1, 8) if d >= low})
    run = args.run.resolve()
    result = {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
              "command": " ".join(["python", *sys.argv]), "environment": environment(),
              "rates": rates_by_token(model, cfg, task, distance=middle),
              **reads(model, cfg, task, more, mapped={middle, distances[-1]}),
              "ablations": {}}
    for kind in ("none", "reset", "no_h", "no_m"):
        with (ablated(model, kind) if kind != "none" else contextlib.nullcontext()):
            evaluation = evaluate_recall(model, distances, cfg.seq_len, cfg.num_facts, cfg.batch_size,
                                         args.eval_batches, task=task)
        result["ablations"][kind] = evaluation["accuracy"]
        print(kind, {d: round(a, 3) for d, a in evaluation["accuracy"].items()}, flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
