"""Chapter 8 on a GPU: the models on the recall tasks and on text at a larger size, and speed.

One script for a CUDA machine, about 9 minutes in all:

* **speed**: the median seconds of a training step (forward, loss, backward, AdamW) of MAC and of MAC
  without memory, with, when ``titans_pytorch`` can be imported, ``titans-pytorch``'s
  ``MemoryAsContextTransformer`` at the size of ``bench_titans.py``, interleaved; with ``--compile``,
  after the training runs, the same two on the compiled path (``*_compiled``,
  :func:`mac_minimal.compiled.compile_regions`).
* **training runs** (``--budget-s`` of wall time in all): ``mac``, ``mac_no_memory`` and
  ``full_attention`` on one-fact recall, four-fact recall, multi-query associative recall (1 to 16
  pairs) and byte-level text, on one-fact recall also chapter 9's ``mag``, ``mal`` and ``swa`` (their
  sliding window alone); ``mac`` with chapter 8's long-horizon recipe (the memory carried across
  windows, facts asked across them), evaluated after training on streams 16 times its training
  length; and ``mac`` on MQAR with chapter 8's recipe (``mqar_input``: the memory writes the layer's
  input through a short convolution, streams of 4 to 16 pairs with the answers hidden).
  Each is one ``python -m mac_minimal.train`` command (printed, and stored with its result). The sizes
  are those of the CPU runs scaled up: width 64 (text 128), sequences of 256 tokens in segments of 32,
  so the evaluation distances reach 8 segments back.

**Time.** Each run is started with an equal share of what is left of the budget (``--parallel N``: N
runs at a time, each with one CPU thread) and stops at the trainer's ``--time-limit`` (its share less
15%, kept for its last evaluation) or at its ``--steps``, whichever comes first, so a run cut
short has its last evaluation and ``"time_limit_reached": true`` (its learning rate had not finished
decaying). A run still going a minute after its share is killed (``"finished": false``, its metrics
up to its last evaluation stand); so is one that fails (its ``exit_status``). A MAC step at these
sizes is thousands of small kernels, so one eager run keeps a GPU mostly idle: run several at once.
Without CUDA's multi-process service (MPS, ``nvidia-cuda-mps-control -d``) the GPU runs one
process's kernels at a time; with it, their kernels overlap.

``--compile`` runs the trainer with ``--compile`` for ``mac``, whose step is thousands of small
kernels: fewer, fused ones, after first steps that compile (once per shape; the models without
memory take a few hundred kernels a step and run eagerly). Before the runs start, one step of each
compiled task fills inductor's cache on disk, one task at a time with every CPU compiling (not
counted in ``--budget-s``; ``"warm_up"`` in ``runs.json``), so the runs load their graphs instead of
compiling them side by side (``--no-warm-up``: they compile their own). A compiled run that fails is run again eagerly in what is left of its
share (``"compile_failed"``: its exit status).

Writes ``book/results/gpu/runs.json`` (the runs' summaries), one ``RUN.jsonl`` metrics file per
run and ``book/results/gpu/speed.json``; chapter 8 plots them when they exist. ``--smoke`` runs
everything at toy sizes on whatever device there is, in a few seconds per run, and writes under
``--out`` (default: a temporary folder), never into the book.

    python3 benchmarks/gpu_record.py --parallel 17 --compile     # on the GPU machine
    python3 benchmarks/gpu_record.py --smoke                     # anywhere, to check the script
    # titans-pytorch has no network there: pip download its wheels here (no dependencies), carry
    # them, then pip install --no-index --no-deps --target DIR wheels/*.whl; PYTHONPATH=DIR
"""

import argparse
import concurrent.futures
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

import torch

from common import (RESULTS, TITANS_SIZED_MAC, load_recall_run, mac_config, median_seconds, next_token_loss, set_flags,
                    training_step, write_json)
from mqar import WRITES_INPUT
from mac_minimal.compiled import compile_regions
from mac_minimal.evaluation import evaluate_recall
from mac_minimal.model import MACTransformer

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMON = ["--depth", "2", "--heads", "4", "--num-persistent", "4", "--lr", "3e-3", "--warmup-steps", "50",
          "--no-progress", "--log-every", "10", "--eval-batches", "4", "--seed", "0"]
RECALL = ["--task", "recall", "--num-values", "32", "--segment-len", "32", "--chunk-size", "32",
          "--batch-size", "64", "--dim", "64"]
TASKS = {   # distances in tokens: 1/2, 1, 2, 4 and ~8 segments of 32
    "one_fact": RECALL + ["--num-facts", "1", "--seq-len", "256", "--eval-distances", "16,32,64,128,252",
                          "--steps", "1500", "--eval-every", "250"],
    "four_facts": RECALL + ["--num-facts", "4", "--seq-len", "272", "--eval-distances", "16,32,64,128,256",
                            "--steps", "1500", "--eval-every", "250"],
    "text": ["--task", "lm", "--max-bytes", "4000000", "--seq-len", "512", "--segment-len", "64",
             "--chunk-size", "64", "--batch-size", "32", "--dim", "128", "--steps", "1500", "--eval-every", "250"],
    # chapter 8's long-horizon recipe from scratch: the memory carried across 256-token windows, each fact
    # asked at the end of every window of its episode (1 to 16 windows, as in the recipe's last stages, the
    # fact's distance to its first question log-uniform); then 16x streams (LONG_STREAM)
    "long_horizon": RECALL + ["--num-facts", "1", "--seq-len", "256", "--eval-distances", "16,32,64,128,252",
                              "--steps", "3000", "--eval-every", "250", "--memory-scale-init", "0",
                              "--memory-max-lr", "0.03", "--memory-alpha-logit-init", "-10", "--carry-state", "0.5",
                              "--episode-windows", "16", "--episode-distances", "log"],
    # chapter 8's multi-query associative recall, 1 to 16 pairs, with the gentler of its two optimiser
    # settings (lr 1e-3 after 200 warmup steps, no weight decay), with which full attention learned it
    "mqar": ["--task", "mqar", "--num-facts", "16", "--num-values", "32", "--seq-len", "256", "--segment-len", "32",
             "--chunk-size", "32", "--batch-size", "64", "--dim", "64", "--steps", "3000", "--eval-every", "250",
             "--lr", "1e-3", "--warmup-steps", "200", "--weight-decay", "0"],
}
# MQAR with chapter 8's recipe for MAC: the memory writes the layer's input (--memory-input input) through a
# convolution of 2, step cap 0.1, streams of 4 or more pairs with the answers hidden, the recall runs' optimiser
TASKS["mqar_input"] = set_flags(TASKS["mqar"], lr="3e-3", warmup_steps=20, weight_decay=0.1) + [
    *WRITES_INPUT, "--memory-max-lr", "0.1", "--memory-alpha-logit-init", "-10", "--memory-scale-init", "0"]
SMOKE = {"one_fact": dict(seq_len=32, segment_len=8, chunk_size=8, eval_distances="4,28", dim=16, batch_size=4),
         "four_facts": dict(seq_len=40, segment_len=8, chunk_size=8, eval_distances="16,24", dim=16, batch_size=4),
         "text": dict(seq_len=32, segment_len=8, chunk_size=8, max_bytes=20000, dim=16, batch_size=4),
         "long_horizon": dict(seq_len=32, segment_len=8, chunk_size=8, eval_distances="4,28", dim=16, batch_size=4),
         "mqar": dict(num_facts=4, seq_len=48, segment_len=8, chunk_size=8, dim=16, batch_size=4)}
SMOKE["mqar_input"] = SMOKE["mqar"]
MODELS = ("mac", "mac_no_memory", "full_attention")
TASK_MODELS = {"one_fact": MODELS + ("mag", "mal", "swa"), "four_facts": MODELS, "text": MODELS,   # chapter 9: one fact
               "long_horizon": ("mac",), "mqar": MODELS, "mqar_input": ("mac",)}
LONG_STREAM = 16         # long_horizon: evaluated on streams 16x the training length, the fact at every distance
EVAL_SHARE = 0.15        # of a run's time, kept for its last evaluation (and long_horizon's long streams)
GRACE_S = 60.0           # a run still going this long after its time is killed
MIN_RUN_S = 30.0         # the least time a run is started with
COMPILED_RUNS = ("mac",)  # --compile: a MAC step is thousands of kernels; the others' hundreds run well eagerly


def train_run(model: str, task: str, smoke: bool, out: pathlib.Path, seconds: float, compiled: bool,
              env: dict[str, str]) -> dict:
    """Train one (model, task) for at most ``seconds`` of wall time and summarise it. ``compiled``: MAC
    on the compiled path (COMPILED_RUNS); a compiled run that fails is run again eagerly in what is left
    of its time (``compile_failed`` in the summary)."""
    deadline = time.perf_counter() + seconds
    flags = set_flags(TASKS[task], **SMOKE[task], steps=6, eval_every=3) if smoke else TASKS[task]
    record = launch(model, task, flags, out, seconds, compiled and model in COMPILED_RUNS, env)
    left = deadline - time.perf_counter()
    if record["compiled"] and record["exit_status"] not in (0, None) and left > MIN_RUN_S:
        print(f"  {model}-{task}: compiled run failed (exit {record['exit_status']}); eager in {left:.0f} s",
              flush=True)
        record = {**launch(model, task, flags, out, left, False, env), "compile_failed": record["exit_status"]}
    return record


def launch(model: str, task: str, flags: list[str], out: pathlib.Path, seconds: float, compiled: bool,
           env: dict[str, str]) -> dict:
    """One ``python -m mac_minimal.train`` run with ``--time-limit`` (``seconds`` less the time kept for
    its last evaluations); killed if it is still running ``GRACE_S`` after ``seconds``."""
    run_dir = out / "runs" / f"{model}-{task}"
    shutil.rmtree(run_dir, ignore_errors=True)
    time_limit = max(seconds * (1 - EVAL_SHARE), 1.0)
    cmd = [sys.executable, "-m", "mac_minimal.train", "--model", model, *COMMON, *flags,
           *(["--compile"] if compiled else []), "--time-limit", f"{time_limit:.0f}", "--out", str(run_dir)]
    print(" ".join(["python", *cmd[1:]]), flush=True)
    start = time.perf_counter()
    try:   # a run that fails or overruns is kept as far as it got: the budget is spent either way
        exit_status = subprocess.run(cmd, cwd=ROOT, env=env, timeout=seconds + GRACE_S,
                                     stdout=subprocess.DEVNULL).returncode
    except subprocess.TimeoutExpired:
        exit_status = None
    finished = exit_status == 0
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    if records:
        shutil.copy(metrics, out / f"{model}-{task}.jsonl")
    evals = [r for r in records if r["event"] == "eval"]
    end = next((r for r in records if r["event"] == "end"), {})
    final = evals[-1] if evals else {}
    long_stream = long_stream_accuracy(run_dir) if task == "long_horizon" and finished else None
    wall = time.perf_counter() - start
    status = "done" if finished else "killed" if exit_status is None else f"failed (exit {exit_status})"
    print(f"  {model}-{task}: {status} in {wall:.0f} s; last evaluation: "
          f"{final.get('accuracy', final.get('bpb'))}", flush=True)
    return {"model": model, "task": task, "command": " ".join(["python", *cmd[1:]]), "compiled": compiled,
            "finished": finished, "exit_status": exit_status, "time_limit_reached": end.get("time_limit_reached"),
            "wall_s": round(wall, 1), "steps": max((r["step"] for r in records if "step" in r), default=0),
            "tokens_per_s": end.get("tokens_per_s"),
            "final": final.get("accuracy", final.get("bpb")), "device": records[0].get("device") if records else None,
            **({"beyond_segment": final["beyond_segment"]} if "beyond_segment" in final else {}),
            **({"long_stream": long_stream} if long_stream else {})}


def long_stream_accuracy(run_dir: pathlib.Path) -> dict:
    """One-fact accuracy of the run's checkpoint on streams LONG_STREAM times its training length, the
    fact half a segment back, one training length back, and 2, 4, 8 and 16 training lengths back."""
    model, cfg, _ = load_recall_run(run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n, long_len = cfg.seq_len, LONG_STREAM * cfg.seq_len
    distances = sorted({cfg.segment_len // 2, n - 4, *(m * n for m in (2, 4, 8) if m < LONG_STREAM), long_len - 3})
    scores = evaluate_recall(model.to(device), distances, long_len, 1, 16, 2, device, task=cfg.recall_task)
    print(f"  on {long_len}-token streams: {scores['accuracy']}", flush=True)
    return {"stream_len": long_len, "accuracy": scores["accuracy"]}


def speed(device: torch.device, smoke: bool, repeats: int, compiled: bool,
          save: Callable[[dict], None] = lambda partial: None) -> dict:
    """Median training-step seconds of MAC and MAC without memory, eager with (if importable)
    titans-pytorch beside them, or (``compiled``) on the compiled path; the warm-up round compiles.
    ``save`` gets the result so far after every sequence length, so a round stopped part-way keeps
    the lengths it finished."""
    try:
        import bench_titans                              # imports titans_pytorch
        size, titans = bench_titans.OURS_MODEL, None if compiled else bench_titans
    except ImportError as error:
        size, titans = TITANS_SIZED_MAC, None
        print(f"titans-pytorch not importable ({error}); timing ours only", flush=True)
    rows = []
    for seq_len in [64] if smoke else [1024, 4096]:
        tokens = torch.randint(0, 256, (2 if smoke else 8, seq_len + 1), device=device,
                               generator=torch.Generator(device=device).manual_seed(0))
        jobs = {}
        for name in ("mac", "mac_no_memory"):
            torch.manual_seed(0)
            model = MACTransformer(mac_config(**size, use_memory=name == "mac")).to(device)
            jobs[name + ("_compiled" if compiled else "")] = training_step(
                compile_regions(model) if compiled else model, tokens, next_token_loss)
        titans_error = None
        if titans is not None:
            try:            # one step first: theirs failing on this device leaves ours timed
                model, loss_fn = titans.make_model("titans")
                jobs["titans"] = training_step(model.to(device), tokens, loss_fn)
                jobs["titans"]()
            except Exception as error:   # recorded with the row
                titans_error = repr(error)
                jobs.pop("titans", None)
                print(f"titans-pytorch failed at n={seq_len}: {titans_error}", flush=True)
        rows.append({"n": seq_len, "batch": tokens.shape[0], "step_s": median_seconds(jobs, repeats),
                     **({"titans_error": titans_error} if titans_error else {})})
        print(f"speed n={seq_len}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in rows[-1]["step_s"].items()),
              flush=True)
        save({"model_config": size, "titans_pytorch": titans is not None, "rows": rows})
    return {"model_config": size, "titans_pytorch": titans is not None, "rows": rows}


def measured(timing: Callable[..., dict], *args: object, **kwargs: object) -> dict:
    """``timing(*args, **kwargs)``, or, where it raises, a record of the error with no rows: the GPU
    time is spent either way, and the training runs still go ahead."""
    try:
        return timing(*args, **kwargs)
    except Exception as error:   # recorded in speed.json and printed, not hidden
        print(f"speed failed: {error!r}", flush=True)
        return {"error": repr(error), "rows": []}


def merge_speed(eager: dict, compiled: dict | None) -> dict:
    """One speed record: the eager rows with the compiled jobs' times added to the rows of the same
    length, and the error of either round, if one failed."""
    rows = {row["n"]: dict(row, step_s=dict(row["step_s"])) for row in eager["rows"]}
    for more in compiled["rows"] if compiled else []:
        rows.setdefault(more["n"], dict(more, step_s={}))["step_s"].update(more["step_s"])
    errors = {name: r["error"] for name, r in (("eager", eager), ("compiled", compiled)) if r and "error" in r}
    about = {k: v for r in (compiled or {}, eager) for k, v in r.items() if k in ("model_config", "titans_pytorch")}
    return {**about, "rows": list(rows.values()), "compiled": compiled is not None,
            **({"errors": errors} if errors else {}),
            "step_s": "median seconds of a float32 training step after one warm-up, implementations interleaved "
                      "(the compiled ones timed after the training runs, in a round of their own)"}


def child_environment(parallel: int) -> dict[str, str]:
    """The environment of the training runs: with several at once, one CPU thread each and inductor
    compiling in the process itself (by default every process would start a worker per CPU)."""
    if parallel == 1:
        return dict(os.environ)
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}


def warm_up(tasks: list[str], smoke: bool, out: pathlib.Path) -> list[dict]:
    """Compile the graphs of the compiled runs before they start: one step and one evaluation of
    ``mac`` on each task, one task after another, with every CPU compiling. Inductor keeps what it
    compiles in its cache on disk, and a later process whose region has the same shapes loads it
    instead of compiling again (the tasks share the model's shapes except text's width and the
    matrices-only write); without this, seventeen runs compiling at once on sixteen cores spent
    173-194 s of their 255 s compiling. Returns each task's seconds and exit status."""
    records = []
    for task in tasks:
        flags = set_flags(TASKS[task], **SMOKE[task]) if smoke else TASKS[task]
        flags = set_flags(flags, steps=1, eval_every=1, eval_batches=1)
        run_dir = out / "runs" / f"warm-up-{task}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "mac_minimal.train", "--model", "mac", *COMMON, *flags, "--compile",
               "--out", str(run_dir)]
        start = time.perf_counter()
        status = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
        records.append({"task": task, "seconds": round(time.perf_counter() - start, 1), "exit_status": status})
        print(f"warm-up {task}: {records[-1]['seconds']:.0f} s (exit {status})", flush=True)
    return records


def run_all(jobs: list[tuple[str, str]], args: argparse.Namespace, out: pathlib.Path) -> list[dict]:
    """Every (model, task) of ``jobs``, ``args.parallel`` at a time, each started with an equal share of
    what is left of ``args.budget_s`` among the jobs not yet started (counted in rounds of ``parallel``)."""
    deadline, env, lock, started = time.perf_counter() + args.budget_s, child_environment(args.parallel), \
        threading.Lock(), [0]

    def one(job: tuple[str, str]) -> dict:
        with lock:
            rounds = math.ceil((len(jobs) - started[0]) / args.parallel)
            started[0] += 1
            share = max((deadline - time.perf_counter()) / rounds, MIN_RUN_S)
        return train_run(*job, args.smoke, out, share, args.compiled, env)

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        return list(pool.map(one, jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device; writes under --out")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall seconds for the training runs")
    parser.add_argument("--parallel", type=int, default=1, help="training runs at a time")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="default: book/results/gpu")
    parser.add_argument("--only", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--compile", dest="compiled", action="store_true",
                        help="training runs on the compiled path (trainer --compile); speed also times it")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="with --compile: no compiling before the runs (each run compiles its own graphs)")
    args = parser.parse_args()
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("no CUDA device: run with --smoke to check the script on a CPU")
    out = args.out or (pathlib.Path(tempfile.mkdtemp(prefix="gpu_record_")) if args.smoke else RESULTS / "gpu")
    out.mkdir(parents=True, exist_ok=True)
    about = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
             "torch": torch.__version__, "smoke": args.smoke}
    repeats = 3 if args.smoke else 5
    eager = measured(speed, device, args.smoke, repeats, compiled=False,
                     save=lambda partial: write_json(out / "speed.json", {**merge_speed(partial, None), **about}))
    write_json(out / "speed.json", {**merge_speed(eager, None), **about})
    jobs = [(model, task) for task in args.only for model in TASK_MODELS[task]]
    compiled_tasks = [task for task in args.only if args.compiled and set(TASK_MODELS[task]) & set(COMPILED_RUNS)]
    warm = warm_up(compiled_tasks, args.smoke, out) if args.warm_up else []
    start = time.perf_counter()
    runs = run_all(jobs, args, out)
    write_json(out / "runs.json", {"runs": runs, **about, "compiled": args.compiled, "parallel": args.parallel,
                                   "warm_up": warm, "budget_s": args.budget_s,
                                   "total_s": round(time.perf_counter() - start, 1)})
    shutil.rmtree(out / "runs", ignore_errors=True)                 # checkpoints stay out of the book
    if args.compiled:
        compiled = measured(speed, device, args.smoke, repeats, compiled=True,
                            save=lambda partial: write_json(out / "speed.json",
                                                            {**merge_speed(eager, partial), **about}))
        write_json(out / "speed.json", {**merge_speed(eager, compiled), **about})


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
