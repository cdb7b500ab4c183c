"""MAC at the speed its arithmetic allows? One training step, eager against compiled (CPU).

A training step (:func:`common.training_step`: forward, next-token cross-entropy, backward, AdamW
step, ``zero_grad``, float32, one thread) of six jobs per setting: MAC (``use_memory=True``), MAC
with its memory's writes recomputed in backward (:func:`mac_minimal.neural_memory.recompute_writes`,
``mac_recompute``) and the same model without memory (``use_memory=False``), each eager and with
:func:`mac_minimal.compiled.compile_regions` (``torch.compile``, inductor, on every MAC attention
layer: one call per segment). The settings are ``bench_training_step.py``'s:

* ``A``, chapter 8's recall setting: vocab 64, width 32, depth 2, heads 4, segment 8, memory chunk
  8, sequences of 64 tokens, batch 32;
* ``B``: vocab 256, width 128, depth 2, heads 4, segment 64, chunk 16, 1,024 tokens, batch 2.

Per job: ``step_s``, the median seconds of a step over ``--repeats`` rounds in which the four jobs
take turns (:func:`common.median_seconds`, after one warm-up step); ``first_step_s``, the first
step (for a compiled job: tracing and compiling every graph, from an empty inductor cache) and
``compile_s`` = first step minus the median step; ``step_memory_bytes``, the resident-set growth of
a step after a warm-up step, in a fresh process whose allocator maps every block of 64 KiB or more
and unmaps it when freed (:func:`common.step_memory_bytes` with ``mmap_threshold``: the resident
set follows the live tensors, not what glibc's heap kept of earlier ones); ``first_loss``,
the loss of the first step (eager and compiled start from the same weights, so the two agree to
float32 rounding). Per model: ``flops``, forward + backward of one step as
``torch.utils.flop_counter.FlopCounterMode`` counts them (matrix products and attention; the same
arithmetic eager or compiled; ``mac_recompute`` counts its second forward pass of the memory), and
each job's achieved ``gflop_per_s``. Writes
``book/results/compiled_benchmark.json``.

    .venv/bin/python benchmarks/bench_compiled.py                  # both settings (long: see README)
    .venv/bin/python benchmarks/bench_compiled.py --settings A     # setting A only
    .venv/bin/python benchmarks/bench_compiled.py --smoke          # toy sizes; writes nothing
    .venv/bin/python benchmarks/bench_compiled.py --smoke --backend aot_eager   # seconds (tests)
"""

import argparse
import dataclasses
import os
import pathlib
import tempfile
import time
from collections.abc import Callable

import torch

import common
from common import RESULTS, environment, mac_config, median_seconds, save_results, step_memory_bytes, training_step
from bench_training_step import SETTINGS
from mac_minimal.compiled import compile_regions
from mac_minimal.model import MACTransformer
from mac_minimal.neural_memory import recompute_writes

OUT = RESULTS / "compiled_benchmark.json"
MODES = ("eager", "compiled")
KINDS = {"mac": dict(use_memory=True), "mac_recompute": dict(use_memory=True, recompute=True),
         "mac_no_memory": dict(use_memory=False)}           # kind -> model config fields (+ recompute)
MMAP_THRESHOLD = 64 * 1024                                   # step memory: blocks >= 64 KiB mapped
SMOKE_SETTINGS = {   # toy sizes: a few seconds to compile each graph
    "A": {"seq_len": 16, "batch": 2,
          "config": dict(vocab_size=64, dim=16, depth=1, heads=2, segment_len=8, chunk_size=8)},
    "B": {"seq_len": 32, "batch": 1,
          "config": dict(vocab_size=256, dim=16, depth=1, heads=2, segment_len=16, chunk_size=16)},
}


def build_model(config: dict) -> MACTransformer:
    """A fresh model (from the current torch seed) with ``config``, its writes recomputed if
    ``config["recompute"]``."""
    config = dict(config)
    recompute = config.pop("recompute", False)
    model = MACTransformer(mac_config(**config))
    return recompute_writes(model) if recompute else model


def build_step(config: dict, seq_len: int, batch: int, compiled: bool, backend: str = "inductor", seed: int = 0,
               prepare: Callable[[MACTransformer], MACTransformer] | None = None, compile_kwargs: dict | None = None):
    """A training step (no arguments) of a fresh :func:`build_model` on random tokens (b, n + 1),
    changed by ``prepare`` if given, then compiled by :func:`compile_regions` with ``backend`` (and
    ``compile_kwargs``, for ``torch.compile``) if ``compiled``. The same seed gives the same weights and
    tokens eager or compiled. Module-level, so :func:`common.step_memory_bytes` can build it in a fresh
    process."""
    torch.manual_seed(seed)
    model = build_model(config)
    if prepare is not None:
        model = prepare(model)
    if compiled:
        compile_regions(model, backend=backend, **(compile_kwargs or {}))
    tokens = torch.randint(0, config["vocab_size"], (batch, seq_len + 1),
                           generator=torch.Generator().manual_seed(seed))
    return training_step(model, tokens)


def step_flops(config: dict, seq_len: int, batch: int) -> int:
    """Floating-point operations of one forward + backward (eager; compiling does not change the
    arithmetic), as ``FlopCounterMode`` counts them (:func:`common.step_flops`)."""
    torch.manual_seed(0)
    model = build_model(config)
    tokens = torch.randint(0, config["vocab_size"], (batch, seq_len + 1))
    return common.step_flops(model, tokens)


def measure_setting(setting: dict, repeats: int, memory: bool, backend: str) -> dict:
    """Every measurement of one setting: step time (the four jobs interleaved), first step, flops,
    and (if ``memory``) step memory, each job in a fresh process."""
    size = dict(seq_len=setting["seq_len"], batch=setting["batch"], backend=backend)
    configs = {kind: setting["config"] | fields for kind, fields in KINDS.items()}
    jobs, first_step_s, first_loss = {}, {}, {}
    for kind, config in configs.items():
        for mode in MODES:
            name = f"{kind} {mode}"
            jobs[name] = build_step(config, compiled=mode == "compiled", **size)
            start = time.perf_counter()
            first_loss[name] = jobs[name]()
            first_step_s[name] = time.perf_counter() - start
            print(f"  {name}: first step {first_step_s[name]:.1f} s", flush=True)
    seconds = median_seconds(jobs, repeats)
    del jobs
    flops = {kind: step_flops(config, setting["seq_len"], setting["batch"]) for kind, config in configs.items()}
    step_memory = {name: (step_memory_bytes(build_step, config=configs[name.split()[0]], mmap_threshold=MMAP_THRESHOLD,
                                            compiled=name.endswith("compiled"), **size) if memory else None)
                   for name in seconds}

    def by_kind(values: dict) -> dict:                      # {"mac eager": x, ...} -> {"mac": {"eager": x}}
        return {kind: {mode: values[f"{kind} {mode}"] for mode in MODES} for kind in KINDS}

    return {**setting, "model_config": dataclasses.asdict(mac_config(**setting["config"])),
            "parameters": {kind: build_model(config).num_parameters() for kind, config in configs.items()},
            "flops": flops,
            "step_s": by_kind(seconds),
            "first_step_s": by_kind(first_step_s),
            "compile_s": {kind: first_step_s[f"{kind} compiled"] - seconds[f"{kind} compiled"] for kind in KINDS},
            "speedup_compiled": {kind: seconds[f"{kind} eager"] / seconds[f"{kind} compiled"] for kind in KINDS},
            "gflop_per_s": by_kind({name: flops[name.split()[0]] / s / 1e9 for name, s in seconds.items()}),
            "step_memory_bytes": by_kind(step_memory),
            "first_loss": by_kind(first_loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per job (median; >= 5)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip step memory (each job in a fresh process, which compiles again)")
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile backend (aot_eager: no C++, to check the script)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, to check the script runs")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help=f"JSON output (default {OUT.relative_to(RESULTS.parents[1])}; --smoke: none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # an empty inductor cache, so that first_step_s is a cold compile (the step-memory processes
    # inherit it, warm)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_compiled_inductor_")
    start, load_at_start = time.perf_counter(), os.getloadavg()
    results = {}
    for name in args.settings:
        setting = SETTINGS[name] | (SMOKE_SETTINGS[name] if args.smoke else {})
        print(f"setting {name} (n={setting['seq_len']}, batch {setting['batch']}):", flush=True)
        row = results[name] = measure_setting(setting, args.repeats, args.memory, args.backend)
        for kind in KINDS:
            print(f"  {kind}: eager {row['step_s'][kind]['eager'] * 1e3:.1f} ms, compiled "
                  f"{row['step_s'][kind]['compiled'] * 1e3:.1f} ms ({row['speedup_compiled'][kind]:.2f}x), "
                  f"compile {row['compile_s'][kind]:.0f} s, {row['flops'][kind] / 1e9:.3f} GFLOP/step", flush=True)
    payload = {
        "description": "one training step (forward, next-token cross-entropy, backward, AdamW step, zero_grad) "
                       "of MACTransformer with and without neural memory (mac_recompute: its writes recomputed "
                       "in backward, mac_minimal.neural_memory.recompute_writes), eager and compiled "
                       "(mac_minimal.compiled.compile_regions: torch.compile with `backend`, per MAC attention layer)",
        "step_s": f"median seconds over repeats after one warm-up step, jobs interleaved, "
                  f"{torch.get_num_threads()} thread",
        "first_step_s": "seconds of the first step; compiled: includes tracing and compiling every graph, "
                        "from an empty inductor cache",
        "compile_s": "first_step_s minus step_s of the compiled job",
        "flops": "FlopCounterMode total of one forward + backward (the optimizer step not counted)",
        "step_memory_bytes": "resident-set growth during one step after a warm-up step, each job in a fresh "
                             f"process with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} (every block of that size "
                             "or more mapped, and unmapped when freed: the resident set follows the live "
                             "tensors; common.step_memory_bytes); null if not measured",
        "backend": args.backend, "smoke": args.smoke, "repeats": args.repeats, "environment": environment(),
        "load_average": {"start": load_at_start, "end": os.getloadavg(),
                         "what": "os.getloadavg() (1, 5, 15 minutes) when the run started and ended: "
                                 "near 0 on an otherwise idle machine; other work slows every time here"},
        "settings": results, "total_seconds": time.perf_counter() - start,
    }
    save_results(payload, args.out, OUT, args.smoke)


if __name__ == "__main__":
    main()
