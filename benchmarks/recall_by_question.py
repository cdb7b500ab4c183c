"""Multi-fact recall, question by question: does a trained model match keys, or answer by elimination?

With ``F`` facts the questions come last, one after another, each followed by its answer. A model
that has learned which values were stored, but not which key goes with which value, can still answer
the *last* question by elimination (the one stored value not yet given as an answer), and a guess among
the stored values gets ``1/F`` of the others. Only the accuracy on the *first* question, ``1/F`` for
such a model and 1 for a model that matches keys, measures the matching.

Loads the checkpoint of every run of ``mac_trainability.py`` named on the command line (default: the
four-fact runs of the three models, and full attention trained three times longer) and writes the
accuracy per question slot, and how often the answer is one of the stored values at all, to
``book/results/trainability/recall_by_question.json``.

    OMP_NUM_THREADS=1 python benchmarks/recall_by_question.py
"""

import argparse
import pathlib

import torch

from common import RESULTS, load_recall_run, write_json
from mac_minimal.data import TOKENS_PER_FACT, recall_batch

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "trainability"
DEFAULT = [f"four-{variant}-s{seed}" for variant in ("scale0-lr0.03", "mac_no_memory", "full_attention")
           for seed in range(3)] + ["four-full_attention-s0-6000steps"]


@torch.no_grad()
def by_question(run: pathlib.Path, batch_size: int) -> dict:
    model, cfg, step = load_recall_run(run)
    n, f = cfg.seq_len, cfg.num_facts
    per_distance = {}
    for distance in cfg.eval_distances:
        batch = recall_batch(batch_size, n, distance, f, torch.Generator().manual_seed(5 + distance),
                             cfg.recall_task)
        logits, _ = model(batch.inputs)
        answer = logits.argmax(-1)
        slots = batch.mask[0].nonzero().flatten()                         # the F answer positions
        fact_start = n + 1 - TOKENS_PER_FACT * f - distance
        stored = batch.inputs[:, fact_start + 3:fact_start + TOKENS_PER_FACT * f:TOKENS_PER_FACT]   # (b, F)
        per_distance[distance] = {
            "accuracy_by_question": [float((answer[:, t] == batch.targets[:, t]).float().mean()) for t in slots],
            "a_stored_value": float(torch.stack([(answer[:, t, None] == stored).any(-1) for t in slots])
                                    .float().mean())}
    return {"run": run.name, "model": cfg.model, "step": step, "by_distance": per_distance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=DEFAULT, help="run names under runs/trainability")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "trainability" / "recall_by_question.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for name in args.runs:
        results.append(by_question(RUNS / name, args.batch_size))
        by_distance = [d["accuracy_by_question"] for d in results[-1]["by_distance"].values()]
        print(name, "accuracy by question, mean over distances:",
              [round(sum(q[i] for q in by_distance) / len(by_distance), 3) for i in range(len(by_distance[0]))],
              flush=True)
    write_json(args.out, {"batch_size": args.batch_size, "runs": results})


if __name__ == "__main__":
    main()
