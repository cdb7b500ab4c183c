"""What makes MAC learn recall: ablations on chapter 8's one-fact task, recorded as JSON.

Each variant is one ``python -m mac_minimal.train`` command (printed before it starts): MAC on the
recall task of ``record_training_runs.py`` (one fact, 32 values, 64 tokens, segments and chunks of 8,
batch 32, lr 3e-3) with some MAC flags changed. Runs go to ``runs/trainability/NAME-sSEED``; each
``metrics.jsonl`` is copied to ``book/results/trainability/NAME-sSEED.jsonl`` and the final
evaluation of every run is collected in ``book/results/trainability/summary.json`` (accuracy per
distance in tokens, segment = 8 tokens; wall time of the run).

    OMP_NUM_THREADS=1 python benchmarks/mac_trainability.py --only scale0-lr0.03 --seeds 0 1 2
    python benchmarks/mac_trainability.py --list
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "book" / "results" / "trainability"
RUNS = ROOT / "runs" / "trainability"

BASE = ["--task", "recall", "--num-facts", "1", "--num-values", "32", "--seq-len", "64",
        "--segment-len", "8", "--chunk-size", "8", "--batch-size", "32", "--steps", "900",
        "--eval-every", "150", "--eval-batches", "4", "--eval-distances", "4,8,16,32,60",
        "--log-every", "10", "--dim", "32", "--depth", "2", "--heads", "4", "--num-persistent", "4",
        "--lr", "3e-3", "--warmup-steps", "20", "--device", "cpu", "--no-progress"]
VARIANTS = {
    "mac": ["--model", "mac"],
    "lr0.03": ["--model", "mac", "--memory-max-lr", "0.03"],
    "scale0": ["--model", "mac", "--memory-scale-init", "0"],
    "scale0-lr0.03": ["--model", "mac", "--memory-scale-init", "0", "--memory-max-lr", "0.03"],
    "scale0-lr0.01": ["--model", "mac", "--memory-scale-init", "0", "--memory-max-lr", "0.01"],
    "mac_no_memory": ["--model", "mac_no_memory"],
}


def run_name(name: str, seed: int, steps: int | None) -> str:
    return f"{name}-s{seed}" + ("" if steps is None else f"-{steps}steps")


def command(name: str, seed: int, steps: int | None = None) -> list[str]:
    out = RUNS.relative_to(ROOT) / run_name(name, seed, steps)
    return [sys.executable, "-m", "mac_minimal.train", *BASE, *VARIANTS[name], "--seed", str(seed),
            *([] if steps is None else ["--steps", str(steps), "--eval-every", str(steps // 6)]),
            "--out", str(out)]


def run(name: str, seed: int, steps: int | None) -> dict:
    """Train one variant; return its final evaluation and wall time."""
    cmd = command(name, seed, steps)
    print(" ".join(cmd[1:]), flush=True)
    out = RUNS / run_name(name, seed, steps)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=os.environ | {"OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "metrics.jsonl", RESULTS / f"{run_name(name, seed, steps)}.jsonl")
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "eval"]
    result = {"variant": name, "seed": seed, "steps": steps or 900, "flags": VARIANTS[name],
              "command": " ".join(["python", *cmd[1:]]), "wall_s": round(seconds, 1),
              "final": evals[-1]["accuracy"], "curve": [(e["step"], e["accuracy"]) for e in evals]}
    print(f"{name} seed {seed}: {result['final']} in {seconds:.0f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=None, help="instead of the base 900")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--list", action="store_true", help="print the commands and stop")
    args = parser.parse_args()
    jobs = [(name, seed, args.steps) for name in args.only for seed in args.seeds]
    if args.list:
        for job in jobs:
            print(" ".join(command(*job)))
        return
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run(*job), jobs))
    summary_path = RESULTS / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"runs": []}
    done = {(r["variant"], r["seed"], r["steps"]) for r in results}
    summary["runs"] = [r for r in summary["runs"]
                       if (r["variant"], r["seed"], r.get("steps", 900)) not in done] + results
    summary["base_flags"] = BASE
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {summary_path}")


if __name__ == "__main__":
    main()
