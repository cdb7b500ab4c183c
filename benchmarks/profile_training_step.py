"""Where a MAC training step spends its time, in the two settings of ``bench_training_step.py``.

Three views, CPU, float32, one thread:

* ``share``: median seconds of a whole training step of MAC and of the memory-free model, and of
  the neural memories alone: every layer's ``NeuralMemory`` called segment by segment on random
  input of the same shapes, forward + backward, as MAC calls it (eq. 24's write and the per-token
  read of eq. 25; the retrieval of eq. 21 is not included).
* ``flops``: multiply-accumulates per token and layer of the memory-free block and of what MAC adds,
  counted from the shapes (d width, f = 4 d, c chunk, segment length), forward only. Their ratio is
  a floor for the time ratio that no implementation of the exact per-token read ``M_t(q_t)`` with
  this memory can beat without changing what is computed.
* ``top_ops``: the operators with the most self time in one MAC step (``torch.profiler``), with
  their share of the step's self time and their microseconds per call. On this machine the
  profiler disturbs a step at B by anything from a little to four times its time, from one step
  to the next, so :data:`PROFILED_STEPS` steps are profiled one by one and the least disturbed
  (least self time) is kept; ``profiled_step_s`` lists the self time of each, to compare with the
  median step.
* ``compiled``: the same MAC step compiled (:func:`~mac_minimal.compiled.compile_regions`, inductor,
  with ``cpp.enable_kernel_profile`` so that every generated loop is a profiler event), its median
  seconds, and the self time of three profiled steps by kind (:data:`COMPILED_KINDS`): the library's
  matrix products, the loops inductor generated, the generated code's own Python between them, the
  attention kernels, and the rest. Compiled with the Python driver (``cpp_wrapper=False``, not
  ``compile_regions``' CPU default): with the C++ driver, inductor (torch 2.13) writes kernel
  profiling into C++ that does not compile, and the driver's share is what ``bench_cpp_wrapper.py``
  measures the C++ driver against.

Writes ``book/results/training_step_profile.json``.

    .venv/bin/python benchmarks/profile_training_step.py          # about 3 minutes (compiling included)
    .venv/bin/python benchmarks/profile_training_step.py --smoke  # toy sizes, aot_eager; writes nothing
"""

import time

import torch
from torch.profiler import profile

from bench_compiled import SMOKE_SETTINGS
from bench_training_step import SETTINGS
from common import (RESULTS, environment, mac_config, median_seconds, parse_benchmark_args, save_results,
                    training_step)
from mac_minimal.compiled import compile_regions
from mac_minimal.model import MACTransformer

OUT = RESULTS / "training_step_profile.json"
PROFILED_STEPS = 5                                           # MAC steps profiled one by one
COMPILED_KINDS = {   # kind -> does a profiler event of a compiled step belong to it (by its name)
    "matrix products (library)": lambda name: name in ("aten::bmm", "aten::mm", "aten::addmm"),
    "generated loops": lambda name: name.startswith("graph_") and "cpp_fused" in name,
    "generated code's Python": lambda name: name.startswith("## Call CompiledFxGraph"),
    "attention kernels": lambda name: "scaled_dot_product" in name,
}


def memories_alone(model: MACTransformer, seq_len: int, batch: int):
    """Forward + backward of every layer's memory, segment by segment, as inside MAC."""
    cfg = model.config
    x = torch.randn(batch, seq_len, cfg.dim, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        total = 0
        for block in model.blocks:
            memory, state = block.attn.memory, None
            for segment in x.split(cfg.segment_len, dim=1):
                y, state = memory(segment, state)
                total = total + y.square().mean()
        total.backward()
    return step


def flops_per_token(d: int, c: int, segment_len: int, ffn_mult: int = 4, expansion: int = 4) -> dict:
    """Forward multiply-accumulates per token and layer, counted from the shapes."""
    f = expansion * d
    no_memory = {"attention projections (q, k, v, out)": 4 * d * d,
                 "attention scores and values over [persistent | segment]": 2 * segment_len * d,
                 "feed-forward network": 2 * ffn_mult * d * d}
    mac_adds = {
        "memory projections q, k, v": 3 * d * d,
        "keys and values of the retrieved h": 2 * d * d,
        "attention over the retrieved h": 2 * segment_len * d,
        "retrieval h = M*(q) (eq. 21)": 2 * d * f,
        "gradient factors at the chunk's weights (W1 k, W2 z, W2^T do)": 3 * d * f,
        "read M_t(q_t): weights and momentum, both layers": 4 * d * f,
        "read M_t(q_t): c x c scores and their products": c * (2 * d + 2 * f),
        "chunk-end weights and momentum (outer-product sums)": 4 * d * f,
    }
    base, extra = sum(no_memory.values()), sum(mac_adds.values())
    return {"no_memory": no_memory, "mac_adds": mac_adds, "no_memory_total": base,
            "mac_total": base + extra, "ratio": (base + extra) / base}


def compiled_view(cfg: dict, tokens: torch.Tensor, repeats: int, backend: str, profiled_steps: int = 3) -> dict:
    """A compiled MAC step: median seconds, and self time per step by :data:`COMPILED_KINDS`."""
    torch._inductor.config.cpp.enable_kernel_profile = True
    torch.manual_seed(0)
    python_driver = {"options": {"cpp_wrapper": False}} if backend == "inductor" else {}
    model = compile_regions(MACTransformer(mac_config(**cfg)), backend=backend, **python_driver)
    step = training_step(model, tokens)
    seconds = median_seconds({"mac_step": step}, repeats, warmup=2)["mac_step"]
    with profile() as prof:
        for _ in range(profiled_steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    kinds = {kind: [e for e in events if belongs(e.key)] for kind, belongs in COMPILED_KINDS.items()}
    shares = {kind: sum(e.self_cpu_time_total for e in mine) / total for kind, mine in kinds.items()}
    shares["rest (eager ops outside the regions, autograd, guards, optimizer)"] = 1 - sum(shares.values())
    products = kinds["matrix products (library)"]
    return {"step_s": seconds, "self_share_by_kind": shares,
            "matrix_product_calls_per_step": sum(e.count for e in products) // profiled_steps,
            "generated_loops_per_step": sum(e.count for e in kinds["generated loops"]) // profiled_steps}


def main() -> None:
    args = parse_benchmark_args(__doc__, OUT, repeats=7, what="timed steps per job")
    start = time.perf_counter()
    results = {}
    for key, setting in SETTINGS.items():
        setting = setting | (SMOKE_SETTINGS[key] if args.smoke else {})
        cfg, n, b = setting["config"], setting["seq_len"], setting["batch"]
        torch.manual_seed(0)
        mac = MACTransformer(mac_config(**cfg))
        no_memory = MACTransformer(mac_config(**cfg, use_memory=False))
        tokens = torch.randint(0, cfg["vocab_size"], (b, n + 1), generator=torch.Generator().manual_seed(0))
        jobs = {"mac_step": training_step(mac, tokens), "no_memory_step": training_step(no_memory, tokens),
                "memories_alone": memories_alone(mac, n, b)}
        seconds = median_seconds(jobs, args.repeats)
        profiles = []
        for _ in range(PROFILED_STEPS):                      # one step each; keep the least disturbed
            with profile(record_shapes=True) as prof:
                jobs["mac_step"]()
            profiles.append((sum(e.self_cpu_time_total for e in prof.key_averages()), prof))
        total, prof = min(profiles, key=lambda pair: pair[0])
        top = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)[:15]
        results[key] = {
            "config": cfg, "seq_len": n, "batch": b, "seconds": seconds,
            "memory_share_of_mac_step": seconds["memories_alone"] / seconds["mac_step"],
            "flops_per_token_and_layer": flops_per_token(cfg["dim"], cfg["chunk_size"], cfg["segment_len"]),
            "profiled_step_s": [t / 1e6 for t, _ in profiles],
            "top_ops": [{"op": e.key, "shapes": str(e.input_shapes), "calls": e.count,
                         "self_share": e.self_cpu_time_total / total,
                         "self_us_per_call": e.self_cpu_time_total / e.count} for e in top],
        }
        results[key]["compiled"] = compiled_view(cfg, tokens, args.repeats, "aot_eager" if args.smoke else "inductor")
        r = results[key]
        print(f"{key}: MAC step {seconds['mac_step'] * 1e3:.0f} ms, memory-free {seconds['no_memory_step'] * 1e3:.0f} ms, "
              f"memories alone {seconds['memories_alone'] * 1e3:.0f} ms ({r['memory_share_of_mac_step']:.0%}); "
              f"forward flop ratio {r['flops_per_token_and_layer']['ratio']:.2f}; compiled MAC step "
              f"{r['compiled']['step_s'] * 1e3:.0f} ms", flush=True)
    save_results({"what": __doc__.split("\n\n")[0], "environment": environment(), "smoke": args.smoke,
                  "repeats": args.repeats, "settings": results, "total_seconds": time.perf_counter() - start},
                 args.out, OUT, args.smoke)


if __name__ == "__main__":
    main()
