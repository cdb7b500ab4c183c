"""Time and memory of one training step of MAC against the same model without memory (CPU).

A training step is forward, next-token cross-entropy, backward, AdamW step and ``zero_grad``
(:func:`common.training_step`), float32 on one CPU thread. Two kinds of model, the same
``MACConfig`` but for ``use_memory``:

* ``mac``: the MAC model (``use_memory=True``);
* ``mac_no_memory``: ``use_memory=False``: segment-local attention over persistent slots and the
  segment, without the neural memory.

Measured in two settings, and the ratio mac / mac_no_memory of each:

* ``A``, chapter 8's recall setting: vocab 64, dim 32, depth 2, heads 4, segment 8, memory chunk 8,
  sequences of 64 tokens, batch 32;
* ``B``, a longer one: vocab 256, dim 128, depth 2, heads 4, segment 64, chunk 16, 1024 tokens,
  batch 2.

Then ``memory_scaling``: the step memory of the setting-B model (both kinds) against the sequence
length (512 ... 8192, batch 1), with one step time per length.

Step time: median over ``--repeats`` after one warm-up step, the two kinds taking turns inside
every repeat (:func:`common.median_seconds`), so that their ratio survives a busy machine.
Step memory: how far the resident set grows during one step after a warm-up step, each model in
a fresh process (:func:`common.step_memory_bytes`: ``VmHWM`` after minus ``VmRSS`` before, on
Linux). Writes ``book/results/training_step_benchmark.json``.

    .venv/bin/python benchmarks/bench_training_step.py            # full sizes
    .venv/bin/python benchmarks/bench_training_step.py --smoke    # tiny sizes, seconds; writes nothing
"""

import dataclasses
import time

import torch

from common import (RESULTS, environment, mac_config, median_seconds, step_memory_bytes, training_step, save_results,
                    parse_benchmark_args)
from mac_minimal.model import MACTransformer

OUT = RESULTS / "training_step_benchmark.json"
KINDS = {"mac": True, "mac_no_memory": False}            # kind -> use_memory
SETTINGS = {
    "A": {"what": "chapter 8 recall setting", "seq_len": 64, "batch": 32,
          "config": dict(vocab_size=64, dim=32, depth=2, heads=4, segment_len=8, chunk_size=8)},
    "B": {"what": "longer sequences, wider model", "seq_len": 1024, "batch": 2,
          "config": dict(vocab_size=256, dim=128, depth=2, heads=4, segment_len=64, chunk_size=16)},
}
SCALING = {"setting": "B", "batch": 1, "lengths": [512, 1024, 2048, 4096, 8192]}
SMOKE_SETTINGS = {"A": {"seq_len": 16, "batch": 4}, "B": {"seq_len": 128, "batch": 1}}
SMOKE_SCALING = {"lengths": [64, 128]}


def build_step(config: dict, seq_len: int, batch: int, seed: int = 0):
    """A training step (no arguments) of a fresh model with ``config`` on random tokens (b, n + 1).

    Module-level, so that :func:`common.step_memory_bytes` can build it in a fresh process."""
    torch.manual_seed(seed)
    model = MACTransformer(mac_config(**config))
    tokens = torch.randint(0, config["vocab_size"], (batch, seq_len + 1),
                           generator=torch.Generator().manual_seed(seed))
    return training_step(model, tokens)


def parameters(config: dict) -> int:
    return MACTransformer(mac_config(**config)).num_parameters()


def measure_setting(setting: dict, repeats: int) -> dict:
    """Step time (both kinds interleaved) and step memory (each in a fresh process) of one setting."""
    configs = {kind: setting["config"] | {"use_memory": use} for kind, use in KINDS.items()}
    size = dict(seq_len=setting["seq_len"], batch=setting["batch"])
    steps = {kind: build_step(config, **size) for kind, config in configs.items()}
    seconds = median_seconds(steps, repeats)
    del steps
    memory = {kind: step_memory_bytes(build_step, config=config, **size) for kind, config in configs.items()}
    row = {**setting, "model_config": dataclasses.asdict(mac_config(**setting["config"])), "parameters": {kind: parameters(config) for kind, config in configs.items()},
           "step_s": seconds, "step_memory_bytes": memory,
           "ratio_mac_over_no_memory": {
               "step_s": seconds["mac"] / seconds["mac_no_memory"],
               "step_memory": (memory["mac"] / memory["mac_no_memory"]
                               if memory["mac"] and memory["mac_no_memory"] else None)}}
    return row


def measure_scaling(config: dict, batch: int, lengths: list[int]) -> list[dict]:
    """Step memory (fresh process) and one step time (after a warm-up) of both kinds per length."""
    rows = []
    for seq_len in lengths:
        row: dict = {"seq_len": seq_len, "step_memory_bytes": {}, "step_s": {}}
        for kind, use in KINDS.items():
            kind_config = config | {"use_memory": use}
            row["step_memory_bytes"][kind] = step_memory_bytes(build_step, config=kind_config,
                                                               seq_len=seq_len, batch=batch)
            row["step_s"][kind] = median_seconds(
                {kind: build_step(kind_config, seq_len, batch)}, repeats=1)[kind]
        rows.append(row)
        print(f"scaling n={seq_len:5d}: " + ", ".join(
            f"{kind} {_mib(row['step_memory_bytes'][kind])} MiB {row['step_s'][kind]:.3f} s" for kind in KINDS),
            flush=True)
    return rows


def _mib(nbytes: int | None) -> str:
    return "?" if nbytes is None else f"{nbytes / 2**20:.1f}"


def main() -> None:
    args = parse_benchmark_args(__doc__, OUT, repeats=7, what="timed steps per kind")
    start = time.perf_counter()
    settings = {name: s | (SMOKE_SETTINGS[name] if args.smoke else {}) for name, s in SETTINGS.items()}
    scaling = SCALING | (SMOKE_SCALING if args.smoke else {})
    results = {}
    for name, setting in settings.items():
        row = results[name] = measure_setting(setting, args.repeats)
        print(f"setting {name} (n={row['seq_len']}, batch {row['batch']}): "
              + ", ".join(f"{kind} {row['step_s'][kind] * 1e3:.1f} ms {_mib(row['step_memory_bytes'][kind])} MiB"
                          for kind in KINDS)
              + f"; ratio time {row['ratio_mac_over_no_memory']['step_s']:.2f}x, memory "
              + f"{row['ratio_mac_over_no_memory']['step_memory'] or float('nan'):.2f}x", flush=True)
    scaling_config = settings[scaling["setting"]]["config"]
    scaling_rows = measure_scaling(scaling_config, scaling["batch"], scaling["lengths"])
    payload = {
        "description": "one training step (forward, next-token cross-entropy, backward, AdamW step, "
                       "zero_grad) of MACTransformer with and without neural memory",
        "step_s": f"median seconds over repeats after one warm-up step, kinds interleaved, "
                  f"{torch.get_num_threads()} thread",
        "step_memory_bytes": "resident-set growth during one step after a warm-up step, each model in a "
                             "fresh process: VmHWM after minus VmRSS before (peak reset via "
                             "/proc/self/clear_refs after gc.collect() and malloc_trim(0))",
        "smoke": args.smoke, "repeats": args.repeats, "environment": environment(),
        "settings": results,
        "memory_scaling": {"setting": scaling["setting"],
                           "model_config": dataclasses.asdict(mac_config(**scaling_config)), "batch": scaling["batch"],
                           "step_s": "one step after a warm-up step", "rows": scaling_rows},
        "total_seconds": time.perf_counter() - start,
    }
    save_results(payload, args.out, OUT, args.smoke)


if __name__ == "__main__":
    main()
