"""Chapter 8 on a GPU: the three models on both recall tasks and on text at a larger size, and speed.

One script for a CUDA machine, about 8 minutes in all (``--budget-s``):

* **training runs**: ``mac``, ``mac_no_memory`` and ``full_attention`` on one-fact recall, four-fact
  recall, multi-query associative recall (1 to 16 pairs) and byte-level text, on one-fact recall also
  chapter 9's ``mag``, ``mal`` and ``swa`` (their sliding window alone), and ``mac`` with chapter 8's
  long-horizon recipe (the memory carried across windows, facts asked across them), evaluated after
  training on streams 16 times its training length; each one ``python -m mac_minimal.train`` command
  (printed, and stored with its result). The sizes are those of the CPU runs scaled up: width 64 (text 128), sequences of
  256 tokens in segments of 32, so the evaluation distances reach 8 segments back. Each run gets an
  equal share of the training budget; a run that is not finished by then is stopped and kept with
  ``"finished": false`` (its metrics up to the last evaluation stand); so is one that fails (its
  ``exit_status``).
* **speed**: the median seconds of a training step (forward, loss, backward, AdamW) of MAC, of MAC
  without memory (each eager and, as ``*_compiled``, with :func:`mac_minimal.compiled.compile_regions`)
  and, when ``titans_pytorch`` can be imported, of ``titans-pytorch``'s
  ``MemoryAsContextTransformer`` at the size of ``bench_titans.py``, interleaved.

``--compile`` runs the trainer with ``--compile`` (the compiled path) and adds the compiled jobs to
**speed**. Off by default until it has been measured on the GPU: each run's time share then also
pays for compiling its graphs (once per shape, cached on disk across runs of the same shapes).

Writes ``book/results/gpu/runs.json`` (the runs' summaries), one ``RUN.jsonl`` metrics file per
run and ``book/results/gpu/speed.json``; chapter 8 plots them when they exist. ``--smoke`` runs
everything at toy sizes on whatever device there is, in a few seconds per run, and writes under
``--out`` (default: a temporary folder), never into the book.

    python3 benchmarks/gpu_record.py                       # on the GPU machine
    python3 benchmarks/gpu_record.py --smoke               # anywhere, to check the script
    python3 benchmarks/gpu_record.py --compile             # the runs and the speed on the compiled path
    # titans-pytorch has no network there: pip download it here, carry the wheels, then
    # pip install --no-index --find-links wheels titans-pytorch
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from common import (RESULTS, TITANS_SIZED_MAC, load_recall_run, mac_config, median_seconds, next_token_loss, set_flags,
                    training_step, write_json)
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
                              "--steps", "1500", "--eval-every", "250", "--memory-scale-init", "0",
                              "--memory-max-lr", "0.03", "--memory-alpha-logit-init", "-10", "--carry-state", "0.5",
                              "--episode-windows", "16", "--episode-distances", "log"],
    # chapter 8's multi-query associative recall, 1 to 16 pairs, with the gentler of its two optimiser
    # settings (lr 1e-3 after 200 warmup steps, no weight decay), with which full attention learned it
    "mqar": ["--task", "mqar", "--num-facts", "16", "--num-values", "32", "--seq-len", "256", "--segment-len", "32",
             "--chunk-size", "32", "--batch-size", "64", "--dim", "64", "--steps", "1500", "--eval-every", "250",
             "--lr", "1e-3", "--warmup-steps", "200", "--weight-decay", "0"],
}
SMOKE = {"one_fact": dict(seq_len=32, segment_len=8, chunk_size=8, eval_distances="4,28", dim=16, batch_size=4),
         "four_facts": dict(seq_len=40, segment_len=8, chunk_size=8, eval_distances="16,24", dim=16, batch_size=4),
         "text": dict(seq_len=32, segment_len=8, chunk_size=8, max_bytes=20000, dim=16, batch_size=4),
         "long_horizon": dict(seq_len=32, segment_len=8, chunk_size=8, eval_distances="4,28", dim=16, batch_size=4),
         "mqar": dict(num_facts=4, seq_len=48, segment_len=8, chunk_size=8, dim=16, batch_size=4)}
MODELS = ("mac", "mac_no_memory", "full_attention")
TASK_MODELS = {"one_fact": MODELS + ("mag", "mal", "swa"), "four_facts": MODELS, "text": MODELS,   # chapter 9: one fact
               "long_horizon": ("mac",), "mqar": MODELS}
LONG_STREAM = 16         # long_horizon: evaluated on streams 16x the training length, the fact at every distance


def train_run(model: str, task: str, smoke: bool, out: pathlib.Path, seconds: float, compiled: bool) -> dict:
    flags = set_flags(TASKS[task], **SMOKE[task], steps=6, eval_every=3) if smoke else TASKS[task]
    flags = flags + ["--compile"] if compiled else flags
    run_dir = out / "runs" / f"{model}-{task}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "mac_minimal.train", "--model", model, *COMMON, *flags, "--out", str(run_dir)]
    print(" ".join(["python", *cmd[1:]]), flush=True)
    start = time.perf_counter()
    try:   # a run that fails or overruns is kept as far as it got: the budget is spent either way
        exit_status = subprocess.run(cmd, cwd=ROOT, timeout=seconds, stdout=subprocess.DEVNULL).returncode
    except subprocess.TimeoutExpired:
        exit_status = None
    finished = exit_status == 0
    wall = time.perf_counter() - start
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    if records:
        shutil.copy(metrics, out / f"{model}-{task}.jsonl")
    evals = [r for r in records if r["event"] == "eval"]
    final = evals[-1] if evals else {}
    long_stream = long_stream_accuracy(run_dir) if task == "long_horizon" and finished else None
    status = "done" if finished else "timed out" if exit_status is None else f"failed (exit {exit_status})"
    print(f"  {status} in {wall:.0f} s; last evaluation: "
          f"{final.get('accuracy', final.get('bpb'))}", flush=True)
    return {"model": model, "task": task, "command": " ".join(["python", *cmd[1:]]), "finished": finished,
            "exit_status": exit_status,
            "wall_s": round(wall, 1), "steps": max((r["step"] for r in records if "step" in r), default=0),
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


def speed(device: torch.device, smoke: bool, repeats: int, compiled: bool) -> dict:
    """Median training-step seconds of MAC, MAC without memory (also compiled, if ``compiled``) and (if
    importable) titans-pytorch; the warm-up round compiles."""
    try:
        import bench_titans                              # imports titans_pytorch
        size, titans = bench_titans.OURS_MODEL, bench_titans
    except ImportError as error:
        size, titans = TITANS_SIZED_MAC, None
        print(f"titans-pytorch not importable ({error}); timing ours only", flush=True)
    lengths = [64] if smoke else [1024, 4096]
    rows = []
    for seq_len in lengths:
        tokens = torch.randint(0, 256, (2 if smoke else 8, seq_len + 1), device=device,
                               generator=torch.Generator(device=device).manual_seed(0))
        torch.manual_seed(0)
        jobs = {"mac": training_step(MACTransformer(mac_config(**size)).to(device), tokens, next_token_loss),
                "mac_no_memory": training_step(MACTransformer(mac_config(**size, use_memory=False)).to(device),
                                               tokens, next_token_loss)}
        if compiled:
            for name in ("mac", "mac_no_memory"):
                torch.manual_seed(0)
                model = MACTransformer(mac_config(**size, use_memory=name == "mac")).to(device)
                jobs[f"{name}_compiled"] = training_step(compile_regions(model), tokens, next_token_loss)
        if titans is not None:
            model, loss_fn = titans.make_model("titans")
            jobs["titans"] = training_step(model.to(device), tokens, loss_fn)
        rows.append({"n": seq_len, "batch": tokens.shape[0], "step_s": median_seconds(jobs, repeats)})
        print(f"speed n={seq_len}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in rows[-1]["step_s"].items()),
              flush=True)
    return {"model_config": size, "titans_pytorch": titans is not None, "compiled": compiled, "rows": rows,
            "step_s": "median seconds of a float32 training step after one warm-up, implementations interleaved"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device; writes under --out")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall seconds for everything")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="default: book/results/gpu")
    parser.add_argument("--only", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--compile", dest="compiled", action="store_true",
                        help="trainer runs with --compile; speed also times compiled MAC")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("no CUDA device: run with --smoke to check the script on a CPU")
    out = args.out or (pathlib.Path(tempfile.mkdtemp(prefix="gpu_record_")) if args.smoke else RESULTS / "gpu")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    speed_result = speed(device, args.smoke, repeats=3 if args.smoke else 10, compiled=args.compiled)
    write_json(out / "speed.json", {**speed_result, "device": torch.cuda.get_device_name() if device.type == "cuda"
                                    else "cpu", "torch": torch.__version__, "smoke": args.smoke})
    jobs = [(model, task) for task in args.only for model in TASK_MODELS[task]]
    runs = []
    for i, (model, task) in enumerate(jobs):
        share = (args.budget_s - (time.perf_counter() - start)) / (len(jobs) - i)
        runs.append(train_run(model, task, args.smoke, out, max(share, 10.0), args.compiled))
    write_json(out / "runs.json", {"runs": runs, "smoke": args.smoke, "compiled": args.compiled,
                                   "budget_s": args.budget_s,
                                   "total_s": round(time.perf_counter() - start, 1)})
    shutil.rmtree(out / "runs", ignore_errors=True)                 # checkpoints stay out of the book


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
