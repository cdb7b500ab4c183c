"""Chapter 9: Titans' three variants (MAC, MAG, MAL), their window alone and full attention, on text and per step.

Two commands, one CPU thread per process (recall beyond the window and the long-horizon recall of
the same models are ``memory_horizon.py``'s variants ``alpha-10``, ``mag``, ``mal``, ``swa``,
``full_attention``):

* ``text``: byte-level language modelling of the Python standard library's sources (the trainer's
  ``--task lm``: names defined in one place recur hundreds of bytes later), 256-byte windows,
  MAC's segments, MAG's and MAL's windows and the memories' chunks of 32 bytes (so a name seen more
  than 32 bytes back reaches a memory model only through its memory, and full attention directly),
  for the models of :data:`TEXT_MODELS` at MAC's parameter count (the trainer matches the widths).
  Every run is one ``python -m mac_minimal.train`` command (printed, and stored with its result);
  a finished run in ``runs/variants/`` is kept, not run again. Writes
  ``book/results/variants/text-MODEL-sSEED.jsonl`` (the run's metrics) and ``text_summary.json``
  (each run's command, wall time and final validation bits per byte).
* ``cost``: the median seconds of one training step (:func:`common.training_step`: forward,
  next-token cross-entropy, backward, AdamW step, float32) of each model of the recall comparison
  (:data:`COST_MODELS`, exactly as ``memory_horizon.py`` trains them: 64-token streams, batch 32,
  MAC at width 32, depth 2, segment = window = memory chunk = 8, the others at MAC's parameter
  count), eager, the models taking turns in every repeat (:func:`common.time_jobs`, in an order
  shuffled anew each round), and the flops of its forward and backward
  (:func:`common.step_flops`). Writes ``book/results/variants/cost.json``.

    OMP_NUM_THREADS=1 python benchmarks/titans_variants.py text --seeds 0 1 2 --jobs 2
    python benchmarks/titans_variants.py text --list                 # print the commands only
    OMP_NUM_THREADS=1 python benchmarks/titans_variants.py cost --repeats 5
    python benchmarks/titans_variants.py cost --smoke --out /tmp/cost.json     # seconds (tests)
"""

import argparse
import fcntl
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from common import RESULTS, environment, set_flags, step_flops, time_jobs, training_step, write_json
from mac_minimal.cli import parse_args
from mac_minimal.layers import num_parameters
from mac_minimal.train_config import build_model
from mac_trainability import COMMON, TEXT, TRAINABLE
from memory_horizon import VARIANTS as HORIZON_VARIANTS
from memory_horizon import finished

ROOT = Path(__file__).resolve().parents[1]
OUT = RESULTS / "variants"
RUNS = ROOT / "runs" / "variants"

# chapter 8's text settings (width 48, 1,000,000 bytes, lr 3e-3) with four times the window, in
# segments of 32 bytes, at a batch that keeps a run within about 3 minutes on one thread
TEXT_FLAGS = set_flags(TEXT, seq_len=256, segment_len=32, chunk_size=32, batch_size=8, steps=500,
                       eval_every=100, eval_batches=8)
MEMORY = ["--memory-max-lr", "0.03"]          # MAC's cap on the memory's step size, for all three
TEXT_MODELS = {
    "mac": TRAINABLE,                         # --model mac --memory-scale-init 0 --memory-max-lr 0.03
    "mag": ["--model", "mag", *MEMORY],
    "mal": ["--model", "mal", *MEMORY],
    "swa": ["--model", "swa"],                # MAG without its memory: the window and the persistent prefix
    "full_attention": ["--model", "full_attention"],
}
# the recall comparison's models (memory_horizon's variants): name -> that variant's trainer flags
COST_MODELS = {"mac": "alpha-10", "mag": "mag", "mal": "mal", "swa": "swa", "full_attention": "full_attention",
               "mac_no_memory": "mac_no_memory"}


# ---------------------------------------------------------------- text
def run_name(model: str, seed: int) -> str:
    return f"text-{model}-s{seed}"


def runs_dir(out: Path, steps: int | None) -> Path:
    """Where the runs go: ``runs/variants`` for the recorded runs; under ``out`` for any other (a
    smoke run never replaces a recorded one)."""
    return RUNS if out == OUT and steps is None else out / "runs"


def text_command(model: str, seed: int, steps: int | None = None, runs: Path = RUNS) -> list[str]:
    """The trainer command of one text run into ``runs`` (``steps``: instead of :data:`TEXT_FLAGS`' 500)."""
    flags = TEXT_FLAGS if steps is None else set_flags(TEXT_FLAGS, steps=steps, eval_every=steps)
    run = runs / run_name(model, seed)
    return ["python", "-m", "mac_minimal.train", *COMMON, *flags, *TEXT_MODELS[model], "--seed", str(seed),
            "--out", str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run)]


def text_run(model: str, seed: int, steps: int | None, out: Path) -> dict:
    """Train one text run unless it finished already; copy its metrics to ``out``; its summary."""
    runs = runs_dir(out, steps)
    cmd = text_command(model, seed, steps, runs)
    run = runs / run_name(model, seed)
    total = int(cmd[cmd.index("--steps") + 1])
    if not finished(run, total):
        shutil.rmtree(run, ignore_errors=True)
        print(" ".join(cmd), flush=True)
        subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       env=os.environ | {"OMP_NUM_THREADS": "1"})
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "metrics.jsonl", out / f"{run_name(model, seed)}.jsonl")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    start = records[0]
    result = {"model": model, "seed": seed, "steps": total, "command": " ".join(cmd),
              "wall_s": round(records[-1]["wall_s"], 1), "final_bpb": evals[-1]["bpb"],
              "curve": [(e["step"], e["bpb"]) for e in evals],
              "parameters": start["parameters"], "dim": start["model_config"]["dim"]}
    print(f"text {model} seed {seed}: {result['final_bpb']:.3f} bits per byte in {result['wall_s']:.0f} s",
          flush=True)
    return result


def text(args: argparse.Namespace) -> None:
    jobs = [(model, seed) for model in args.only for seed in args.seeds]
    if args.list:
        for job in jobs:
            print(" ".join(text_command(*job, args.steps, runs_dir(args.out, args.steps))))
        return
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: text_run(*job, args.steps, args.out), jobs))
    path = args.out / "text_summary.json"
    with open(args.out / ".text_summary.lock", "w") as lock:      # several invocations may finish at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = json.loads(path.read_text()) if path.exists() else {"runs": []}
        done = {(r["model"], r["seed"]) for r in results}
        summary["runs"] = [r for r in summary["runs"] if (r["model"], r["seed"]) not in done] + results
        summary["runs"].sort(key=lambda r: (list(TEXT_MODELS).index(r["model"]), r["seed"]))
        summary["flags"] = {"common": COMMON, "text": TEXT_FLAGS, "models": TEXT_MODELS}
        write_json(path, summary)


# ---------------------------------------------------------------- cost
def cost_model(name: str, smoke: bool = False) -> tuple[torch.nn.Module, torch.Tensor, object]:
    """The recall comparison's model ``name`` (as ``memory_horizon.py`` trains it; ``smoke``: 16-token
    streams, batch 2), initialised from seed 0, a batch of random tokens (b, n + 1) and its config."""
    cfg = parse_args(COMMON + HORIZON_VARIANTS[COST_MODELS[name]])
    torch.manual_seed(0)
    model, config = build_model(cfg, cfg.recall_task.vocab_size)
    seq_len, batch = (16, 2) if smoke else (cfg.seq_len, cfg.batch_size)
    tokens = torch.randint(0, cfg.recall_task.vocab_size, (batch, seq_len + 1),
                           generator=torch.Generator().manual_seed(0))
    return model, tokens, config


def cost(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    jobs, rows = {}, {}
    for name in COST_MODELS:
        model, tokens, config = cost_model(name, args.smoke)
        flops = step_flops(model, tokens)
        model.zero_grad(set_to_none=True)
        jobs[name] = training_step(model, tokens)
        rows[name] = {"flops": flops, "parameters": num_parameters(model), "dim": config.dim,
                      "variant": COST_MODELS[name], "seq_len": tokens.shape[1] - 1, "batch": tokens.shape[0]}
    times = time_jobs(jobs, args.repeats, order=random.Random(0))
    for name, seconds in times.items():
        rows[name] |= {"step_s": statistics.median(seconds), "step_s_all": seconds,
                       "gflop_per_s": rows[name]["flops"] / statistics.median(seconds) / 1e9}
        print(f"{name:15s} dim {rows[name]['dim']:3d}: {rows[name]['step_s'] * 1e3:7.1f} ms/step, "
              f"{rows[name]['flops'] / 1e9:.3f} GFLOP/step", flush=True)
    payload = {
        "description": "one eager training step (forward, next-token cross-entropy, backward, AdamW step, "
                       "zero_grad) of each model of chapter 9's recall comparison, as memory_horizon.py "
                       "trains it (the variant named), on random tokens",
        "step_s": f"median seconds over {args.repeats} rounds after one warm-up round, the models taking turns "
                  "in an order shuffled every round, 1 thread",
        "flops": "FlopCounterMode total of one forward + backward (the optimizer step not counted)",
        "repeats": args.repeats, "smoke": args.smoke, "environment": environment(), "models": rows,
        "total_seconds": time.perf_counter() - start}
    write_json(args.out, payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    text_parser = commands.add_parser("text", help="the text runs (trainer commands)")
    text_parser.add_argument("--only", nargs="+", choices=list(TEXT_MODELS), default=list(TEXT_MODELS))
    text_parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    text_parser.add_argument("--steps", type=int, default=None, help="instead of 500 (a smoke run)")
    text_parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    text_parser.add_argument("--out", type=Path, default=OUT, help="where the metrics and the summary go")
    text_parser.add_argument("--list", action="store_true", help="print the commands and stop")
    cost_parser = commands.add_parser("cost", help="step time and flops of each model")
    cost_parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    cost_parser.add_argument("--smoke", action="store_true", help="16-token streams, batch 2")
    cost_parser.add_argument("--out", type=Path, default=OUT / "cost.json")
    args = parser.parse_args()
    {"text": text, "cost": cost}[args.command](args)


if __name__ == "__main__":
    main()
