"""How many pairs, and how long a stream? MQAR models trained on 64 tokens and 4 to 8 pairs, evaluated
on more pairs and longer streams than they were trained on (chapter 8, MQAR).

Each trained run of ``benchmarks/mqar.py`` (its checkpoint under ``runs/mqar``) is evaluated, with the
answers hidden as in its training, on streams of 64, 128, 256 and 1,024 tokens holding 1 to 32 pairs (every
key of the vocabulary), wherever the pairs and their questions fit (``seq_len >= 4 N - 1``). Per cell
128 streams (4 fixed batches of 32, the same for every model): the accuracy over the questions asked
beyond their pair's segment (8 tokens; for a model without segments the same questions). Chance is
1/32; a model that knows the stream's values and no key scores about 1/N.

Writes ``book/results/mqar/capacity.json``.

    OMP_NUM_THREADS=1 python benchmarks/mqar_capacity.py
"""

import argparse
import time
from pathlib import Path

import torch

from common import RESULTS, ROOT, environment, load_recall_run, write_json
from mac_minimal.data import mqar_batch, mqar_min_length
from mac_minimal.evaluation import EVAL_SEED, score_mqar_batch

RUNS = ("mac-many-hidden-conv2-lr0.1-input-3000-s0", "mac-many-hidden-conv2-lr0.1-input-3000-s1",
        "mac-many-hidden-conv2-lr0.1-input-3000-s2", "mac-many-hidden-conv2-lr0.1-3000-s0",
        "full_attention-hidden-s0", "mac_no_memory-hidden-s0")
LENGTHS = (64, 128, 256, 1024)
PAIRS = (1, 2, 4, 8, 12, 16, 24, 32)
BATCH, BATCHES, SEGMENT = 32, 4, 8


@torch.no_grad()
def accuracy_beyond_segment(model: torch.nn.Module, seq_len: int, pairs: int, task) -> float:
    """Fraction of the answers asked beyond their pair's segment that ``model`` gets right, over
    ``BATCHES`` fixed batches of hidden-answer streams."""
    generator = torch.Generator().manual_seed(EVAL_SEED + 1000 * seq_len + pairs)
    scores = [score_mqar_batch(model, mqar_batch(BATCH, seq_len, pairs, generator, task, show_answers=False),
                               pairs, SEGMENT, torch.device("cpu")) for _ in range(BATCHES)]
    return round(sum(s.right_beyond for s in scores) / sum(s.answers_beyond for s in scores), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), help="run folders under --runs-dir")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "mqar"))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS), help="stream lengths")
    parser.add_argument("--out", default=str(RESULTS / "mqar" / "capacity.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start, models = time.perf_counter(), {}
    for name in args.runs:
        model, cfg, step = load_recall_run(Path(args.runs_dir) / name)
        cells = [{"seq_len": n, "pairs": p, "beyond_segment": accuracy_beyond_segment(model, n, p, cfg.recall_task)}
                 for n in args.lengths for p in PAIRS if n >= mqar_min_length(p)]
        models[name] = {"model": cfg.model, "step": step, "trained_on": {"seq_len": cfg.seq_len,
                        "pairs": [cfg.min_facts, cfg.num_facts], "show_answers": cfg.mqar_show_answers},
                        "cells": cells}
        for n in args.lengths:
            row = {c["pairs"]: c["beyond_segment"] for c in cells if c["seq_len"] == n}
            print(f"{name} {n} tokens: {row}", flush=True)
    write_json(Path(args.out), {"command": "OMP_NUM_THREADS=1 python benchmarks/mqar_capacity.py",
                                "wall_s": round(time.perf_counter() - start, 1),
                                "environment": environment() | {"threads": 1},
                                "streams_per_cell": BATCH * BATCHES, "segment_len": SEGMENT, "models": models})


if __name__ == "__main__":
    main()
