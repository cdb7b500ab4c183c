"""Shared pieces of the benchmark scripts: timing, step memory, the training step, JSON output.

* :func:`median_seconds` times several jobs round-robin (every repeat runs each job once, in turn),
  so that a busy moment of a shared machine hits all of them alike and their ratios survive;
  :func:`with_flush` runs a job with the CPU's flush-to-zero on or off.
* :func:`step_memory_bytes` measures how far the resident set grows during one call of a job
  (one training step, say), in a fresh process, after a warm-up call. Linux only (``/proc``):
  after the warm-up, ``gc.collect()`` and glibc's ``malloc_trim(0)`` give freed heap back to the
  OS, writing ``5`` to ``/proc/self/clear_refs`` resets the peak ``VmHWM`` to the current
  ``VmRSS``; the result is ``VmHWM`` after the call minus ``VmRSS`` before it. What the process
  held before the call (weights, optimizer state, the interpreter) does not count; activations
  kept for backward, gradients and temporaries do.
* :func:`training_step` builds one training step: forward, next-token cross-entropy, backward,
  AdamW step, ``zero_grad``; :func:`step_flops` counts the flops of its forward and backward.
* :func:`write_json` and :func:`environment`: results with the torch version and the machine;
  :func:`save_results` writes a timing script's result (nothing for ``--smoke``), and
  :func:`parse_benchmark_args` parses the flags those scripts share.
* :func:`set_flags` edits a trainer command line; :func:`load_recall_run` loads the model a recall
  run of the trainer left behind; ``TITANS_SIZED_MAC`` is the MAC timed against titans-pytorch.

Used as a module of the scripts next to it (``python benchmarks/bench_x.py`` puts this folder on
``sys.path``).
"""

import argparse
import ctypes
import gc
import json
import multiprocessing
import os
import pathlib
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mac_minimal.checkpoint import load_trained_model
from mac_minimal.model import MACConfig
from mac_minimal.neural_memory import NeuralMemoryConfig
from mac_minimal.train_config import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "book" / "results"

Job = Callable[[], object]

# MAC as the paper writes it, on the trainer's command line: eq. (25) without chapter 8's learned
# scale, and chapter 4's cap on the memory's step size (the defaults are chapter 8's two changes).
AS_WRITTEN = ["--memory-scale-init", "none", "--memory-max-lr", "0.1"]

# Our MAC at about the trained-parameter count of titans-pytorch's README MAC at width 64 (bench_titans.py
# explains the match); gpu_record.py times the same model.
TITANS_SIZED_MAC = dict(vocab_size=256, dim=64, depth=2, heads=4, segment_len=64, num_persistent=4,
                        chunk_size=16, ffn_mult=8)


def mac_config(chunk_size: int, **fields: object) -> MACConfig:
    """The MACConfig of a benchmark's flat, recorded settings: ``chunk_size`` is the memory's chunk
    (``MACConfig.memory.chunk_size``), every other key a field of MACConfig."""
    return MACConfig(memory=NeuralMemoryConfig(chunk_size=chunk_size), **fields)


def time_jobs(jobs: dict[str, Job], repeats: int, warmup: int = 1,
              order: random.Random | None = None) -> dict[str, list[float]]:
    """Seconds of every timed call of each job: ``warmup`` untimed rounds, then ``repeats`` rounds
    in which every job runs once (round-robin, interleaved), in the order given or, with ``order``,
    in an order shuffled anew each timed round (who runs after whom can matter: allocator state)."""
    names = list(jobs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        if order is not None and round_ >= warmup:
            order.shuffle(names)
        for name in names:
            start = time.perf_counter()
            jobs[name]()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def with_flush(flush: bool, job: Job) -> Job:
    """``job`` run with the CPU's flush-to-zero set to ``flush`` (``torch.set_flush_denormal``: subnormal
    floats treated as zero), and off again after; timed beside ``with_flush(not flush, job)``, the two
    settings take turns like any two jobs of :func:`median_seconds`."""
    def run() -> object:
        torch.set_flush_denormal(flush)
        try:
            return job()
        finally:
            torch.set_flush_denormal(False)
    return run


def median_seconds(jobs: dict[str, Job], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of one call of each job, timed by :func:`time_jobs` in the order given."""
    return {name: statistics.median(t) for name, t in time_jobs(jobs, repeats, warmup).items()}


# ---------------------------------------------------------------- the training step
def next_token_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]`` with a model whose
    forward returns ``(logits, state)`` (``MACTransformer``); tokens (b, n + 1)."""
    logits, _ = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def training_step(model: torch.nn.Module, tokens: torch.Tensor,
                  loss_fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = next_token_loss,
                  lr: float = 1e-3) -> Job:
    """One training step as a function of no arguments: loss, backward, AdamW step, zero_grad.

    The optimizer's state is created by the first call (the warm-up of the timings)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def step() -> float:
        loss = loss_fn(model, tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def step_flops(model: torch.nn.Module, tokens: torch.Tensor,
               loss_fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = next_token_loss) -> int:
    """Floating-point operations of one forward + backward of ``loss_fn(model, tokens)`` as
    ``torch.utils.flop_counter.FlopCounterMode`` counts them (matrix products and attention; the
    optimizer step is not counted). Leaves gradients in ``model``."""
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, tokens).backward()
    return counter.get_total_flops()


# ---------------------------------------------------------------- step memory
def _proc_status_kib(*keys: str) -> dict[str, int]:
    text = pathlib.Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE).group(1)) for key in keys}


def _measure_here(build: Callable[..., Job], kwargs: dict, threads: int) -> int:
    """In this process: build the job, call it once (warm-up), give freed memory back, reset the
    peak, call it again; bytes of ``VmHWM`` after minus ``VmRSS`` before."""
    torch.set_num_threads(threads)
    job = build(**kwargs)
    job()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    before = _proc_status_kib("VmRSS")["VmRSS"]
    job()
    after = _proc_status_kib("VmHWM")["VmHWM"]
    return (after - before) * 1024


MMAP_THRESHOLD_VARIABLE = "MALLOC_MMAP_THRESHOLD_"   # glibc: blocks this large or larger are mmap-ed


def step_memory_bytes(build: Callable[..., Job], threads: int = 1, mmap_threshold: int | None = None,
                      **kwargs: object) -> int | None:
    """Resident-set growth (bytes) of the second call of ``build(**kwargs)()``, in a fresh process.

    ``build`` must be a module-level function (the process is started with ``spawn``, which
    imports the calling script again, so the script needs its ``if __name__ == "__main__"``
    guard). ``mmap_threshold`` (bytes) sets glibc's ``MALLOC_MMAP_THRESHOLD_`` in that process:
    every block at least that large is mapped on allocation and unmapped when freed, so the
    resident set follows the tensors alive at each moment instead of what the allocator's heap
    kept from earlier ones. Returns None where it cannot be measured: not Linux, or the process
    died (killed for memory, say)."""
    if not sys.platform.startswith("linux"):
        return None
    context = multiprocessing.get_context("spawn")
    saved = os.environ.get(MMAP_THRESHOLD_VARIABLE)
    if mmap_threshold is not None:                         # the spawned process inherits the environment
        os.environ[MMAP_THRESHOLD_VARIABLE] = str(mmap_threshold)
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(_measure_here, build, kwargs, threads).result()
    except BrokenProcessPool:
        print(f"step_memory_bytes: the process died measuring {build.__name__}({kwargs})", flush=True)
        return None
    finally:
        if saved is None:
            os.environ.pop(MMAP_THRESHOLD_VARIABLE, None)
        else:
            os.environ[MMAP_THRESHOLD_VARIABLE] = saved



# ---------------------------------------------------------------- output
def environment() -> dict:
    """What the numbers were measured with."""
    return {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "dtype": "float32",
            "device": "cpu"}


def write_json(path: pathlib.Path, payload: dict) -> None:
    """Write ``payload`` as indented JSON (parents created) and say where."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}", flush=True)


def save_results(payload: dict, out: pathlib.Path | None, default: pathlib.Path, smoke: bool) -> None:
    """Write ``payload`` to ``out``, or to ``default`` unless this is a ``--smoke`` run (which writes
    only where it is told), and say how long the run took (``payload["total_seconds"]``)."""
    out = out if out is not None else (None if smoke else default)
    if out is not None:
        write_json(out, payload)
    print(f"done in {payload['total_seconds']:.0f} s")


def parse_benchmark_args(doc: str, default_out: pathlib.Path, repeats: int, what: str,
                         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The flags every timing script shares (``--repeats``, ``--smoke``, ``--out``) and those
    ``add_arguments`` adds, parsed; one torch thread."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--repeats", type=int, default=repeats, help=f"{what} (median; >= 5)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help=f"JSON output (default {default_out.relative_to(RESULTS.parents[1])}; --smoke: none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    return args


def variant_parser(doc: str, names: list[str]) -> argparse.ArgumentParser:
    """A parser with the flags of a script that runs named trainer variants over seeds: ``--only``
    (some of ``names``; default all), ``--seeds`` (default 0), ``--jobs`` (runs at once, default 2) and
    ``--list`` (print the commands and stop, see :func:`run_variants`)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=names, default=names)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--list", action="store_true", help="print the commands and stop")
    return parser


def run_variants(args: argparse.Namespace, command: Callable[..., list[str]], work: Callable[..., object],
                 *extra: object) -> list:
    """``work(name, seed, *extra)`` for every variant of ``args.only`` and seed of ``args.seeds``,
    ``args.jobs`` at once, in threads (each run is a subprocess); with ``args.list`` only print
    ``command(name, seed, *extra)`` for each and return []. Returns the results in order."""
    jobs = [(name, seed, *extra) for name in args.only for seed in args.seeds]
    if args.list:
        for job in jobs:
            print(" ".join(command(*job)))
        return []
    with ThreadPoolExecutor(args.jobs) as pool:
        return list(pool.map(lambda job: work(*job), jobs))


def variant_flags(name: str, variants: dict[str, list[str]],
                  continued: dict[str, tuple[str, dict[str, object]]]) -> list[str]:
    """The trainer flags of variant ``name``: ``variants[name]``, or for a continued variant
    (``continued[name] = (base, changes)``) its base's flags with ``changes`` set and ``--resume``."""
    if name not in continued:
        return variants[name]
    base, changes = continued[name]
    base_flags = [f for f in variant_flags(base, variants, continued) if f != "--resume"]
    return set_flags(base_flags, **changes) + ["--resume"]


def set_flags(flags: list[str], **values: object) -> list[str]:
    """A trainer command line ``flags`` with ``--name value`` set for every ``name=value`` given:
    replaced in place where the flag is already there, appended where it is not."""
    flags = list(flags)
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if flag in flags:
            flags[flags.index(flag) + 1] = str(value)
        else:
            flags += [flag, str(value)]
    return flags


def load_recall_run(run: pathlib.Path) -> tuple[torch.nn.Module, TrainConfig, int]:
    """The model a recall run of the trainer left in ``run/checkpoint.pt`` (CPU, eval mode), the
    run's :class:`~mac_minimal.train_config.TrainConfig` and the step the checkpoint was saved at."""
    return load_trained_model(run / "checkpoint.pt")


def run_trainer(cmd: list[str], resume_copy_of: pathlib.Path | None = None) -> tuple[float, list[dict]]:
    """Run a recorded trainer command (``python -m mac_minimal.train ... --out DIR``, DIR relative to the
    repository, emptied first; with ``resume_copy_of``, a copy of that run directory, which a command
    with ``--resume`` continues) on one thread; return its wall seconds and its metrics records."""
    out = ROOT / cmd[cmd.index("--out") + 1]
    shutil.rmtree(out, ignore_errors=True)
    if resume_copy_of is not None:
        shutil.copytree(resume_copy_of, out)
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=os.environ | {"OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    return wall, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
