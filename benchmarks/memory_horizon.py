"""The memory's horizon (chapter 8): how far past its training length a trained MAC recalls one fact, and why.

Every variant is one trainer command on the one-fact task of ``mac_trainability.py`` (64-token
streams, segments and memory chunks of 8, both trainability changes), with the memory's rates
initialised differently. Two steps, each on one CPU thread per process, two processes at a time:

* ``--train``: run the variants' commands (``runs/horizon/NAME-sSEED``; a finished run is kept);
* ``--evaluate`` (the default): load each run's checkpoint and measure, on streams ``--long``
  times the training length (16x: 1,024 tokens, 128 segments), with the fact at every distance
  from half a segment to the whole stream (so the memory holds the filler written before the fact
  as well as after it):

  - recall accuracy against distance (:func:`~mac_minimal.evaluation.evaluate_recall`);
  - the memory's learned rates by token type on such a stream (``theta_t`` on the filler against
    on the fact, ``alpha_t``), and the learned biases of their logits;
  - with ``--alpha-shifts``, the same accuracy with the forgetting logit shifted at evaluation
    only (the horizon against a forced alpha).

Writes ``book/results/horizon/NAME-sSEED.json`` (the command, its wall time, the training-length
evaluation, the long-stream one) and a copy of the run's ``metrics.jsonl``.

    OMP_NUM_THREADS=1 python benchmarks/memory_horizon.py --train --only alpha-7 --seeds 0 1 2
    python benchmarks/memory_horizon.py --only alpha-7 --seeds 0 --alpha-shifts -2 2
    python benchmarks/memory_horizon.py --list
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from common import RESULTS, environment, load_recall_run, set_flags, write_json
from mac_minimal.evaluation import evaluate_recall
from mac_trainability import COMMON, ONE_FACT, TRAINABLE
from what_memory_learned import rates_by_token

ROOT = Path(__file__).resolve().parents[1]
OUT = RESULTS / "horizon"
RUNS = ROOT / "runs" / "horizon"

BASE = set_flags(ONE_FACT, steps=2000, eval_every=500)
MAC = BASE + TRAINABLE
VARIANTS = {
    "default": MAC,                                                   # alpha ~ 0.018: ~55 tokens
    "alpha-7": MAC + ["--memory-alpha-logit-init", "-7"],             # alpha ~ 0.0009: ~1,100 tokens
    "alpha-7-theta-3": MAC + ["--memory-alpha-logit-init", "-7", "--memory-theta-logit-init", "-3"],
    "mac_no_memory": BASE + ["--model", "mac_no_memory"],
    "full_attention": BASE + ["--model", "full_attention"],
}


def run_dir(name: str, seed: int) -> Path:
    return RUNS / f"{name}-s{seed}"


def command(name: str, seed: int) -> list[str]:
    return ["python", "-m", "mac_minimal.train", *COMMON, *VARIANTS[name], "--seed", str(seed),
            "--out", str(run_dir(name, seed).relative_to(ROOT))]


def finished(run: Path) -> bool:
    path = run / "metrics.jsonl"
    return path.exists() and '"event": "end"' in path.read_text()


def train(name: str, seed: int) -> None:
    """Run the variant's command unless its run finished already; record its wall time beside it."""
    run = run_dir(name, seed)
    if finished(run):
        return
    cmd = command(name, seed)
    print(" ".join(cmd), flush=True)
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=os.environ | {"OMP_NUM_THREADS": "1"})
    print(f"{name} seed {seed}: trained in {time.perf_counter() - start:.0f} s", flush=True)


def long_distances(long_len: int, train_len: int, segment: int) -> list[int]:
    """Half a segment, then doublings, the training range's end and 2x, 4x, 8x, 16x .. its length, and
    the whole stream (the fact in its first tokens)."""
    high = long_len + 1 - 4
    points = {segment // 2, segment, 2 * segment, 4 * segment, train_len - 4, high}
    points |= {train_len * m for m in (2, 4, 8, 12) if train_len * m < high}
    return sorted(points)


def shifted_alpha(model: torch.nn.Module, shift: float):
    """Add ``shift`` to every memory's forgetting logit (the bias of ``to_rates``'s third output)."""
    biases = [block.attn.memory.to_rates.bias for block in model.blocks]
    for bias in biases:
        bias.data[2] += shift
    return biases


@torch.no_grad()
def evaluate(name: str, seed: int, long: int, batches: int, alpha_shifts: list[float]) -> dict:
    run = run_dir(name, seed)
    model, cfg, step = load_recall_run(run)
    torch.set_num_threads(1)
    long_len = long * cfg.seq_len
    distances = long_distances(long_len, cfg.seq_len, cfg.segment_len)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    end = next(m for m in metrics if m["event"] == "end")
    result = {"variant": name, "seed": seed, "step": step, "command": " ".join(command(name, seed)),
              "train_wall_s": round(end["wall_s"], 1), "train_len": cfg.seq_len, "long_len": long_len,
              "final_at_train_len": [m for m in metrics if m["event"] == "eval"][-1]["accuracy"],
              "environment": environment()}

    def accuracy() -> dict:
        start = time.perf_counter()
        scores = evaluate_recall(model, distances, long_len, cfg.num_facts, 32, batches, task=cfg.recall_task)
        print(f"  {name} s{seed}: {({d: round(a, 2) for d, a in scores['accuracy'].items()})} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        return scores["accuracy"]

    result["accuracy"] = accuracy()
    if cfg.model == "mac":
        rates = rates_by_token(model, cfg.__class__(**{**cfg.__dict__, "seq_len": long_len}), cfg.recall_task,
                               distance=long_len // 2)
        result["rates"] = [{"by_type": layer["by_type"], "memory_scale": layer["memory_scale"],
                            "logit_bias": block.attn.memory.to_rates.bias.tolist()}
                           for layer, block in zip(rates["layers"], model.blocks)]
        result["alpha_shifts"] = {}
        for shift in alpha_shifts:
            biases = shifted_alpha(model, shift)
            result["alpha_shifts"][shift] = accuracy()
            for bias in biases:
                bias.data[2] -= shift
    shutil.copy(run / "metrics.jsonl", OUT / f"{name}-s{seed}.jsonl")
    write_json(OUT / f"{name}-s{seed}.json", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--train", action="store_true", help="train the runs first (finished ones are kept)")
    parser.add_argument("--long", type=int, default=16, help="evaluation streams, in training lengths")
    parser.add_argument("--eval-batches", type=int, default=4, help="batches of 32 per distance")
    parser.add_argument("--alpha-shifts", nargs="*", type=float, default=[],
                        help="also evaluate with the forgetting logit shifted by these")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--list", action="store_true", help="print the training commands and stop")
    args = parser.parse_args()
    jobs = [(name, seed) for name in args.only for seed in args.seeds]
    if args.list:
        for job in jobs:
            print(" ".join(command(*job)))
        return
    with ThreadPoolExecutor(args.jobs) as pool:
        if args.train:
            list(pool.map(lambda job: train(*job), jobs))
        list(pool.map(lambda job: evaluate(*job, args.long, args.eval_batches, args.alpha_shifts), jobs))


if __name__ == "__main__":
    main()
