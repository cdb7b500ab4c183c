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
  their share of the step's self time and their microseconds per call (under the profiler, which
  adds a little to every call).

Writes ``book/results/training_step_profile.json``.

    .venv/bin/python benchmarks/profile_training_step.py      # about a minute
"""

import argparse

import torch
from torch.profiler import profile

from bench_training_step import SETTINGS
from common import RESULTS, environment, mac_config, median_seconds, training_step, write_json
from mac_minimal.model import MACTransformer


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(RESULTS / "training_step_profile.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for key, setting in SETTINGS.items():
        cfg, n, b = setting["config"], setting["seq_len"], setting["batch"]
        torch.manual_seed(0)
        mac = MACTransformer(mac_config(**cfg))
        no_memory = MACTransformer(mac_config(**cfg, use_memory=False))
        tokens = torch.randint(0, cfg["vocab_size"], (b, n + 1), generator=torch.Generator().manual_seed(0))
        jobs = {"mac_step": training_step(mac, tokens), "no_memory_step": training_step(no_memory, tokens),
                "memories_alone": memories_alone(mac, n, b)}
        seconds = median_seconds(jobs, args.repeats)
        with profile(record_shapes=True) as prof:
            jobs["mac_step"]()
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        top = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)[:15]
        results[key] = {
            "config": cfg, "seq_len": n, "batch": b, "seconds": seconds,
            "memory_share_of_mac_step": seconds["memories_alone"] / seconds["mac_step"],
            "flops_per_token_and_layer": flops_per_token(cfg["dim"], cfg["chunk_size"], cfg["segment_len"]),
            "top_ops": [{"op": e.key, "shapes": str(e.input_shapes), "calls": e.count,
                         "self_share": e.self_cpu_time_total / total,
                         "self_us_per_call": e.self_cpu_time_total / e.count} for e in top],
        }
        r = results[key]
        print(f"{key}: MAC step {seconds['mac_step'] * 1e3:.0f} ms, memory-free {seconds['no_memory_step'] * 1e3:.0f} ms, "
              f"memories alone {seconds['memories_alone'] * 1e3:.0f} ms ({r['memory_share_of_mac_step']:.0%}); "
              f"forward flop ratio {r['flops_per_token_and_layer']['ratio']:.2f}", flush=True)
    write_json(args.out, {"what": __doc__.split("\n\n")[0], "environment": environment(),
                          "repeats": args.repeats, "settings": results})


if __name__ == "__main__":
    main()
