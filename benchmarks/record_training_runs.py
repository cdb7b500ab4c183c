"""Record chapter 8's training runs: three models x two tasks, on the CPU, small enough for a laptop.

    OMP_NUM_THREADS=1 python benchmarks/record_training_runs.py            # all six runs
    python benchmarks/record_training_runs.py --only mac-recall --dry-run   # print one command
    python benchmarks/record_training_runs.py --only mac-recall mac_no_memory-recall --steps 900

Each run is one ``python -m mac_minimal.train`` command (printed before it starts, so every
recorded result can be reproduced by hand), at most two at a time, each process on one thread.
The runs go to ``runs/chapter8/MODEL-TASK`` (checkpoints stay there); each ``metrics.jsonl`` is
copied to ``book/results/training/MODEL-TASK.jsonl`` (``MODEL-TASK-Nsteps`` with ``--steps N``),
which the notebook of chapter 8 plots.

The settings, and why:

* recall: ONE fact per sequence and ``--num-values 32`` (chance accuracy 1/32). With one fact the
  answer is the only value-range token in the sequence, so copying it is a single attention head:
  full attention learns it in about 200 steps at batch 32 (at batch 8 only 8 answer tokens per
  step carry any signal: after 300 steps it was at 16%). Sequences of 64 tokens, segment 8,
  so the evaluation distances 4, 8, 16, 32, 60 are 0.5x, 1x, 2x, 4x and 7.5x the segment.
* lm: the first 1 MB of the Python standard library's sources, bytes, 128-byte windows.
* Every model sees the same steps and batches. When these runs were recorded MAC was 23-30x slower
  per step on a CPU than the others (the memory materialised per-token weights), which set the
  budget: about 5 minutes per MAC run at 300 steps. Chapter 4's dual form has since cut a MAC
  step in this setting to about 9x the memory-free model (``bench_training_step.py``).

Recorded for the book (2-core CPU shared with other jobs, so the timings are noisy): the six runs
above, then ``--only mac-recall mac_no_memory-recall full_attention-recall --steps 900``.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import AS_WRITTEN

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "book" / "results" / "training"
RUNS = ROOT / "runs" / "chapter8"
MODELS = ("mac", "mac_no_memory", "full_attention")

COMMON = ["--dim", "32", "--depth", "2", "--heads", "4", "--num-persistent", "4", "--lr", "3e-3",
          "--warmup-steps", "20", "--seed", "0", "--device", "cpu", "--no-progress"]
TASKS = {
    "recall": ["--task", "recall", "--num-facts", "1", "--num-values", "32", "--seq-len", "64",
               "--segment-len", "8", "--chunk-size", "8", "--batch-size", "32", "--steps", "300",
               "--eval-every", "50", "--eval-batches", "4", "--eval-distances", "4,8,16,32,60",
               "--log-every", "10"],
    "lm": ["--task", "lm", "--max-bytes", "1000000", "--seq-len", "128", "--segment-len", "16",
           "--chunk-size", "16", "--batch-size", "16", "--steps", "300", "--eval-every", "50",
           "--eval-batches", "8", "--log-every", "10"],
}


def command(model: str, task: str, steps: int | None, out: str) -> list[str]:
    """The trainer's command line for one recorded run (``steps`` None: the setting above)."""
    as_written = AS_WRITTEN if model == "mac" else []
    return [sys.executable, "-m", "mac_minimal.train", "--model", model, *as_written, *COMMON, *TASKS[task],
            *([] if steps is None else ["--steps", str(steps)]), "--out", str(RUNS.relative_to(ROOT) / out)]


def record(run: str, steps: int | None, dry_run: bool) -> str:
    """Run ``run`` = ``MODEL-TASK`` afresh and copy its metrics; returns a one-line report."""
    model, task = run.rsplit("-", 1)
    name = run if steps is None else f"{run}-{steps}steps"
    cmd = command(model, task, steps, name)
    print(" ".join(["OMP_NUM_THREADS=1", "python", *cmd[1:]]), flush=True)
    if dry_run:
        return f"{name}: not run"
    shutil.rmtree(RUNS / name, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"{name}: FAILED (exit {done.returncode})\n{done.stderr[-2000:]}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RUNS / name / "metrics.jsonl", RESULTS / f"{name}.jsonl")
    return f"{name}: done in {time.perf_counter() - started:.0f} s"


def main() -> None:
    names = [f"{m}-{t}" for m in MODELS for t in TASKS]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=names, default=names, help="record only these runs")
    p.add_argument("--jobs", type=int, default=2, help="runs at the same time")
    p.add_argument("--steps", type=int, default=None, help="override the steps (the files get a -Nsteps suffix)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args()
    # the slow MAC runs first, so the fast ones fill the other slot while they train
    order = sorted(args.only, key=lambda n: not n.startswith("mac-"))
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda n: record(n, args.steps, args.dry_run), order):
            print(line, flush=True)


if __name__ == "__main__":
    main()
