"""Chapter 8's recorded recall run, eager and compiled, side by side (chapter 7's cost section).

The command is ``mac_trainability.py``'s ``scale0-lr0.03`` one-fact run at 2,500 steps (the run
chapter 8 shows learning), once as recorded and once with ``--compile``. Both start together, one
CPU thread each, so they share the machine's load; the wall time of each is the whole command
(start-up, compilation and evaluations included). The first training step's time is the compile
time of the compiled run (and the first step of the eager one), from an empty inductor cache.

Writes ``book/results/compiled_recall_run.json``: per run the command, the wall time, the first
step's time, the training tokens/s, the seconds of the training loop (the ``end`` record: after the
start-up and the first evaluation), the seconds spent evaluating (every ``eval`` record's
``eval_s``), and the accuracy curve, so the two curves can be compared.

    python benchmarks/compiled_recall_run.py              # about 10 minutes on two free cores
"""

import argparse
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import RESULTS, ROOT, environment, run_trainer, set_flags, write_json
from mac_trainability import COMMON, ONE_FACT, TRAINABLE

RUNS = ROOT / "runs" / "compiled_recall_run"


def command(steps: int, compiled: bool, seed: int) -> list[str]:
    flags = set_flags(ONE_FACT, steps=steps, eval_every=steps // 6) + TRAINABLE + (["--compile"] if compiled else [])
    out = RUNS / f"{'compiled' if compiled else 'eager'}-s{seed}"
    return ["python", "-m", "mac_minimal.train", *COMMON, *flags, "--seed", str(seed),
            "--out", str(out.relative_to(ROOT))]


def run(steps: int, compiled: bool, seed: int) -> dict:
    cmd = command(steps, compiled, seed)
    wall, metrics = run_trainer(cmd)
    train = [m for m in metrics if m["event"] == "train"]
    end = next(m for m in metrics if m["event"] == "end")
    first_step_s = train[0]["elapsed_s"] - (train[1]["elapsed_s"] - train[0]["elapsed_s"])  # less one record's time
    result = {"compiled": compiled, "command": " ".join(cmd), "wall_s": round(wall, 1),
              "first_record_s": round(train[0]["elapsed_s"], 1), "compile_s_estimate": round(first_step_s, 1),
              "tokens_per_s": end["tokens_per_s"], "loop_s": round(end["wall_s"], 1),
              "evaluation_s": round(sum(m["eval_s"] for m in metrics if m["event"] == "eval"), 1),
              "curve": [(m["step"], m["accuracy"]) for m in metrics if m["event"] == "eval"]}
    print(f"{'compiled' if compiled else 'eager'}: {wall:.0f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "compiled_recall_run.json")
    args = parser.parse_args()
    # an empty inductor cache, so that the compiled run's wall time includes compiling every graph
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compiled_recall_run_inductor_")
    load_at_start = os.getloadavg()
    with ThreadPoolExecutor(2) as pool:
        eager, compiled = pool.map(lambda c: run(args.steps, c, args.seed), (False, True))
    write_json(args.out, {"environment": environment() | {"threads": 1},
                          "how": "both at once, one thread each; the inductor cache empty at the start",
                          "load_average": {"start": load_at_start, "end": os.getloadavg()},
                          "eager": eager, "compiled": compiled,
                          "wall_ratio": round(eager["wall_s"] / compiled["wall_s"], 2)})


if __name__ == "__main__":
    main()
