"""Where a compiled MAC layer gets its rotary cosines and sines, and what it costs (CPU).

:class:`~mac_minimal.mac_attention.MACAttention` rotates queries and keys with rows of a table it
computes once (``MACAttention.rotary``: :func:`~mac_minimal.rotary.rotary_table`, positions inside
a segment). The alternative, the angles computed in every call as
:func:`~mac_minimal.rotary.apply_rotary` does, gives the same numbers; compiled, inductor fuses
``base ** (-2i / e)``, ``cos`` and ``sin`` (float64) into the loops that rotate, and evaluates them
once per element of every query and key. This script compiles the MAC training step of chapter 7's
settings A and B (:data:`bench_training_step.SETTINGS`) both ways, from the same weights and tokens
(:class:`AnglesInEachCall` is the alternative, a subclass used only here), and records, float32,
one thread:

* ``step_s``: median seconds of a compiled training step (forward, loss, backward, AdamW,
  zero_grad), the two jobs interleaved (:func:`common.median_seconds`);
* ``first_step_s``: the first step of each, which compiles its graphs (the inductor cache is
  emptied at the start; the second job finds the first one's identical kernels built, so the
  two are not a comparison of compile times);
* ``first_loss``: the two compute the same step.

Writes ``book/results/rotary_table.json``.

    .venv/bin/python benchmarks/bench_rotary_table.py            # about 5 minutes
    .venv/bin/python benchmarks/bench_rotary_table.py --smoke    # toy sizes, aot_eager; writes nothing
"""

import os
import tempfile
import time

import torch
from torch import Tensor

from bench_compiled import SMOKE_SETTINGS, build_step
from bench_training_step import SETTINGS
from common import RESULTS, environment, median_seconds, parse_benchmark_args, save_results
from mac_minimal.mac_attention import MACAttention
from mac_minimal.rotary import rotary_angles

OUT = RESULTS / "rotary_table.json"


class AnglesInEachCall(MACAttention):
    """MAC attention that computes its rotary angles in every call, as ``apply_rotary`` does."""

    def rotary(self, start: int, n: int) -> tuple[Tensor, Tensor]:
        positions = torch.arange(start, start + n, device=self.rotary_cos.device)
        angles = rotary_angles(positions, self.config.head_dim, self.config.rotary_base)
        return angles.cos(), angles.sin()


def angles_in_each_call(model: torch.nn.Module) -> torch.nn.Module:
    """Turn every MAC layer of ``model`` into :class:`AnglesInEachCall` (same parameters, same
    buffers), in place; returns ``model``."""
    for module in model.modules():
        if type(module) is MACAttention:
            module.__class__ = AnglesInEachCall
    return model


def main() -> None:
    args = parse_benchmark_args(__doc__, OUT, repeats=9, what="timed steps per job")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_rotary_table_inductor_")
    backend = "aot_eager" if args.smoke else "inductor"
    start = time.perf_counter()
    settings = {key: SETTINGS[key] | (SMOKE_SETTINGS[key] if args.smoke else {}) for key in SETTINGS}
    steps, first_step, first_loss = {}, {}, {}
    for key, setting in settings.items():
        size = dict(seq_len=setting["seq_len"], batch=setting["batch"], compiled=True, backend=backend)
        jobs = {"table": build_step(setting["config"], **size),
                "angles in each call": build_step(setting["config"], **size, prepare=angles_in_each_call)}
        first_step[key], first_loss[key] = {}, {}
        for name, job in jobs.items():
            tick = time.perf_counter()
            first_loss[key][name] = job()
            first_step[key][name] = time.perf_counter() - tick
        steps[key] = median_seconds(jobs, args.repeats)
        print(key, {name: f"{s * 1e3:.1f} ms" for name, s in steps[key].items()},
              {name: f"first {s:.0f} s" for name, s in first_step[key].items()}, flush=True)
    payload = {
        "what": __doc__.split("\n\n")[0],
        "step_s": "median seconds of a compiled training step over repeats, the two jobs interleaved, after "
                  "the first step; keys: setting, then 'table' (the package) or 'angles in each call'",
        "first_step_s": "seconds of the first step (compiling, then the step); the inductor cache is empty for the "
                        "first job of the script, the second finds the kernels the two share already built",
        "smoke": args.smoke, "repeats": args.repeats, "backend": backend, "environment": environment(),
        "settings": settings, "step_s_by_setting": steps, "first_step_s_by_setting": first_step,
        "first_loss": first_loss, "total_seconds": time.perf_counter() - start,
    }
    save_results(payload, args.out, OUT, args.smoke)


if __name__ == "__main__":
    main()
