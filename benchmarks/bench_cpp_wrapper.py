"""The compiled MAC step with inductor's driver in C++ (``cpp_wrapper``): step time and compile time.

Inductor turns each compiled region into loops of generated C++ and calls to library matrix
products, and by default it calls them one after the other from generated *Python* (chapter 7's
profile: about a ninth of a compiled step at setting B). ``torch._inductor.config.cpp_wrapper =
True`` writes that driver in C++ too, compiled with the rest: less time per call, perhaps more
time compiling. Every compiled model of a process shares its graphs (and the setting can be
process-wide), so the two configurations cannot take turns in one process: each measurement is a
process of its own, with an empty inductor cache, compiled with ``options={"cpp_wrapper": ...}``
set explicitly, and the two alternate (``off, on, on, off, ...``) over ``--rounds`` rounds so that
a slow stretch of a shared machine falls on both. (Since this measurement,
:func:`~mac_minimal.compiled.compile_regions` uses the C++ driver by default on a CPU.)

Each process builds the compiled MAC step of ``bench_compiled.py`` (:func:`bench_compiled.build_step`,
one training step: forward, loss, backward, AdamW, ``zero_grad``; float32, one thread) at a setting of
``bench_training_step.py`` (A or B) and records ``first_step_s`` (compiling every graph, then the
step), ``step_s`` (median of ``--repeats`` steps after one more warm-up step) and ``compile_s`` (the
difference) and the first step's loss (the same weights and tokens in both configurations, so the
same loss up to float32 rounding). The result gives every process's numbers and, per setting and
configuration, the medians over the rounds. Writes ``book/results/cpp_wrapper.json``.

    .venv/bin/python benchmarks/bench_cpp_wrapper.py               # A and B, 3 rounds (about 12 minutes)
    .venv/bin/python benchmarks/bench_cpp_wrapper.py --smoke       # toy sizes; writes nothing
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bench_compiled import SMOKE_SETTINGS, build_step
from bench_training_step import SETTINGS
from common import RESULTS, environment, save_results

OUT = RESULTS / "cpp_wrapper.json"
CONFIGURATIONS = {"python driver": False, "cpp_wrapper": True}


def measure(setting: dict, cpp_wrapper: bool, repeats: int) -> dict:
    """One process's measurement (run by ``--child``): the compiled MAC step at ``setting``."""
    torch.set_num_threads(1)
    step = build_step(setting["config"], setting["seq_len"], setting["batch"], compiled=True,
                      compile_kwargs={"options": {"cpp_wrapper": cpp_wrapper}})
    start = time.perf_counter()
    first_loss = step()
    first_step_s = time.perf_counter() - start
    step()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    step_s = statistics.median(seconds)
    return {"first_step_s": first_step_s, "step_s": step_s, "compile_s": first_step_s - step_s,
            "first_loss": first_loss}


def run_child(name: str, configuration: str, repeats: int, smoke: bool) -> dict:
    """:func:`measure` in a fresh process with an empty inductor cache; its result."""
    cache = tempfile.mkdtemp(prefix="bench_cpp_wrapper_inductor_")
    cmd = [sys.executable, __file__, "--child", name, configuration, "--repeats", str(repeats)]
    cmd += ["--smoke"] if smoke else []
    done = subprocess.run(cmd, check=True, capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": cache})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per process (median; >= 5)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per setting and configuration")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--smoke", action="store_true", help="toy sizes, to check the script runs")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help=f"JSON output (default {OUT.relative_to(RESULTS.parents[1])}; --smoke: none)")
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "CONFIGURATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    def setting_of(name: str) -> dict:
        return SETTINGS[name] | (SMOKE_SETTINGS[name] if args.smoke else {})

    if args.child:
        name, configuration = args.child
        print(json.dumps(measure(setting_of(name), CONFIGURATIONS[configuration], args.repeats)))
        return
    start, load_at_start = time.perf_counter(), os.getloadavg()
    results = {}
    for name in args.settings:
        runs = {configuration: [] for configuration in CONFIGURATIONS}
        for round_ in range(args.rounds):
            order = list(CONFIGURATIONS) if round_ % 2 == 0 else list(reversed(CONFIGURATIONS))
            for configuration in order:
                runs[configuration].append(run_child(name, configuration, args.repeats, args.smoke))
                last = runs[configuration][-1]
                print(f"{name} {configuration}: step {last['step_s'] * 1e3:.1f} ms, compile {last['compile_s']:.0f} s",
                      flush=True)
        median = {configuration: {field: statistics.median(r[field] for r in rs) for field in ("step_s", "compile_s")}
                  for configuration, rs in runs.items()}
        ratio = median["cpp_wrapper"]["step_s"] / median["python driver"]["step_s"]
        results[name] = {"seq_len": setting_of(name)["seq_len"], "batch": setting_of(name)["batch"],
                         "config": setting_of(name)["config"], "runs": runs, "median": median,
                         "step_ratio_cpp_over_python": ratio}
        print(f"{name}: cpp_wrapper / python driver, step {results[name]['step_ratio_cpp_over_python']:.3f}; compile "
              f"{median['cpp_wrapper']['compile_s']:.0f} vs {median['python driver']['compile_s']:.0f} s", flush=True)
    payload = {"what": __doc__.split("\n\n")[0],
               "how": "each measurement a fresh process with an empty inductor cache, the two configurations "
                      "alternating; step_s: median of the process's timed steps; median: over the rounds",
               "smoke": args.smoke, "repeats": args.repeats, "rounds": args.rounds,
               "load_average_at_start": load_at_start, "environment": environment(), "settings": results,
               "total_seconds": time.perf_counter() - start}
    save_results(payload, args.out, OUT, args.smoke)


if __name__ == "__main__":
    main()
