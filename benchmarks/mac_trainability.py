"""What makes MAC learn recall: ablations and recorded runs (chapter 8), as JSON.

Each variant is one ``python -m mac_minimal.train`` command (printed before it starts, and stored with
its result, so every number can be reproduced by hand), on one CPU thread:

* one fact (the recall task of ``record_training_runs.py``: 32 values, 64 tokens, segments and chunks of 8,
  batch 32, lr 3e-3; distances 4 .. 60 tokens = 0.5 .. 7.5 segments) for MAC as written, with each of
  the two trainability knobs (``--memory-scale-init 0``: a learned scale on eq. 25's memory term that
  starts at zero; ``--memory-max-lr``: the cap of the memory's step size) and with both, with both and
  the memory writing the layer's input (``--memory-input input``), and for the two baselines;
* four facts queried in shuffled order (80 tokens; distances 2 .. 8 segments), and byte-level text at
  width 48, for MAC with both knobs and for the baselines; on text also two attempts at closing MAC's
  gap (a step cap of 0.01; memory chunks of 8).

MAC as written is ``--memory-scale-init none --memory-max-lr 0.1``; every variant spells out both
flags, so that its command means the same whatever ``MACConfig``'s defaults are.

Runs go to ``runs/trainability/NAME-sSEED[-Nsteps]``; each ``metrics.jsonl`` is copied to
``book/results/trainability/`` and the final evaluation, the evaluation curve, the command and the wall
time of every run are collected in ``book/results/trainability/summary.json`` (accuracy per distance
in tokens for recall, validation bits per byte for text).

    OMP_NUM_THREADS=1 python benchmarks/mac_trainability.py --only scale0-lr0.03 --seeds 0 1 2 --steps 2500
    python benchmarks/mac_trainability.py --list                 # print the commands only
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import AS_WRITTEN, run_variants, set_flags, variant_parser

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "book" / "results" / "trainability"
RUNS = ROOT / "runs" / "trainability"

COMMON = ["--depth", "2", "--heads", "4", "--num-persistent", "4", "--lr", "3e-3", "--warmup-steps", "20",
          "--device", "cpu", "--no-progress", "--log-every", "10"]
# one fact, 32 values: distances 4 .. 60 tokens = 0.5 .. 7.5 segments of 8
ONE_FACT = ["--task", "recall", "--num-facts", "1", "--num-values", "32", "--seq-len", "64",
            "--segment-len", "8", "--chunk-size", "8", "--batch-size", "32", "--steps", "900",
            "--eval-every", "150", "--eval-batches", "4", "--eval-distances", "4,8,16,32,60", "--dim", "32"]
# four facts queried in shuffled order: distances 16 .. 64 tokens = 2 .. 8 segments of 8
FOUR_FACTS = ["--task", "recall", "--num-facts", "4", "--num-values", "32", "--seq-len", "80",
              "--segment-len", "8", "--chunk-size", "8", "--batch-size", "32", "--steps", "2000",
              "--eval-every", "250", "--eval-batches", "4", "--eval-distances", "16,32,48,64", "--dim", "32"]
# bytes of the Python standard library; dim 48, where MAC and the memory-free model match in size
TEXT = ["--task", "lm", "--max-bytes", "1000000", "--seq-len", "128", "--segment-len", "16",
        "--chunk-size", "16", "--batch-size", "16", "--steps", "1500", "--eval-every", "250",
        "--eval-batches", "8", "--dim", "48"]


TRAINABLE = ["--model", "mac", "--memory-scale-init", "0", "--memory-max-lr", "0.03"]
VARIANTS = {
    "mac": ONE_FACT + ["--model", "mac", *AS_WRITTEN],
    "lr0.03": ONE_FACT + ["--model", "mac", "--memory-scale-init", "none", "--memory-max-lr", "0.03"],
    "scale0": ONE_FACT + ["--model", "mac", "--memory-scale-init", "0", "--memory-max-lr", "0.1"],
    "scale0-lr0.03": ONE_FACT + TRAINABLE,
    "scale0-lr0.01": ONE_FACT + ["--model", "mac", "--memory-scale-init", "0", "--memory-max-lr", "0.01"],
    # the memory writes the layer's input x, as titans-pytorch and chapter 8's MQAR recipe do (here without
    # its convolution); compiled: the same computation, equal to eager up to float32 rounding (chapter 7)
    "scale0-lr0.03-input": ONE_FACT + TRAINABLE + ["--memory-input", "input", "--compile"],
    "mac_no_memory": ONE_FACT + ["--model", "mac_no_memory"],
    "full_attention": ONE_FACT + ["--model", "full_attention"],
    "four-scale0-lr0.03": FOUR_FACTS + TRAINABLE,
    "four-mac_no_memory": FOUR_FACTS + ["--model", "mac_no_memory"],
    "four-full_attention": FOUR_FACTS + ["--model", "full_attention"],
    "text-scale0-lr0.03": TEXT + TRAINABLE,
    "text-mac_no_memory": TEXT + ["--model", "mac_no_memory"],
    # two attempts to close the text gap: a smaller memory step, and memory chunks of 8 (fresher weights)
    "text-scale0-lr0.01": TEXT + ["--model", "mac", "--memory-scale-init", "0", "--memory-max-lr", "0.01"],
    "text-chunk8": set_flags(TEXT, chunk_size=8) + TRAINABLE,
}


def run_name(name: str, seed: int, steps: int | None) -> str:
    return f"{name}-s{seed}" + ("" if steps is None else f"-{steps}steps")


def command(name: str, seed: int, steps: int | None = None) -> list[str]:
    out = RUNS.relative_to(ROOT) / run_name(name, seed, steps)
    flags = VARIANTS[name] if steps is None else set_flags(VARIANTS[name], steps=steps, eval_every=steps // 6)
    return [sys.executable, "-m", "mac_minimal.train", *COMMON, *flags, "--seed", str(seed),
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
    result = {"variant": name, "seed": seed, "steps": int(cmd[cmd.index("--steps") + 1]), "flags": VARIANTS[name],
              "command": " ".join(["python", *cmd[1:]]), "wall_s": round(seconds, 1),
              "final": evals[-1].get("accuracy", evals[-1].get("bpb")),
              "curve": [(e["step"], e.get("accuracy", e.get("bpb"))) for e in evals]}
    print(f"{name} seed {seed}: {result['final']} in {seconds:.0f} s", flush=True)
    return result


def main() -> None:
    parser = variant_parser(__doc__, list(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="instead of the base 900")
    args = parser.parse_args()
    results = run_variants(args, command, run, args.steps)
    if args.list:
        return
    summary_path = RESULTS / "summary.json"
    with open(RESULTS / ".summary.lock", "w") as lock:          # several invocations may finish at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"runs": []}
        done = {(r["variant"], r["seed"], r["steps"]) for r in results}
        summary["runs"] = [r for r in summary["runs"]
                           if (r["variant"], r["seed"], r.get("steps", 900)) not in done] + results
        summary["common_flags"] = COMMON
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {summary_path}")


if __name__ == "__main__":
    main()
