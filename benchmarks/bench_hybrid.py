"""Time the sequential MM-Rec block against the hybrid one (chapter 3).

Both compute the same function with the same parameters: ``MMRecBlock.forward`` runs all
nine steps of the MM-Rec design inside a loop over tokens; ``hybrid_forward`` loops only over the
core formula ``h_t = z_t * sigmoid(W_g h_{t-1}) + gamma_t * h_{t-1}`` and does the rest
over the whole sequence (scans, a window, one batched read). Also timed: the loop of the
core formula alone, the part that no rewriting can remove. Median seconds over repeats,
methods timed round-robin, float32 on CPU. Writes ``book/results/hybrid_benchmark.json``.

    .venv/bin/python benchmarks/bench_hybrid.py
"""

import argparse
import pathlib
import platform
import time
from typing import Callable, Dict

import torch

from common import RESULTS, median_seconds, write_json
from mac_minimal.hybrid import hybrid_forward
from mac_minimal.recurrence import MMRecBlock, MMRecConfig

OUT = RESULTS / "hybrid_benchmark.json"


def core_loop(block: MMRecBlock, x: torch.Tensor) -> torch.Tensor:
    """Only what must stay sequential: projections, then the loop over ``block.recur``."""
    p = block.project(x)
    h, hs = torch.zeros_like(x[:, 0]), []
    for z_t, gamma_t in zip(p.z.unbind(1), p.gamma.unbind(1)):
        h = block.recur(z_t, gamma_t, h)
        hs.append(h)
    return torch.stack(hs, 1)


def bench_length(block: MMRecBlock, batch: int, length: int, repeats: int) -> dict:
    """Median forward and forward+backward seconds of each form at one length."""
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(batch, length, block.config.dim, generator=gen)
    forms: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "sequential": lambda x_: block(x_)[0],
        "hybrid": lambda x_: hybrid_forward(block, x_)[0],
        "core_loop_only": lambda x_: core_loop(block, x_),
    }
    params = list(block.parameters())
    jobs: Dict[str, Callable[[], object]] = {}
    for name, fn in forms.items():
        def forward(fn=fn):
            with torch.no_grad():
                fn(x)

        def forward_backward(fn=fn):
            torch.autograd.grad(fn(x).square().mean(), params, allow_unused=True)
        jobs[f"{name}/forward"], jobs[f"{name}/forward_backward"] = forward, forward_backward
    seconds = median_seconds(jobs, repeats)
    row: dict = {"L": length, "repeats": repeats}
    for name in forms:
        row[name] = {"forward_s": seconds[f"{name}/forward"],
                     "forward_backward_s": seconds[f"{name}/forward_backward"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MMRecConfig(dim=args.dim)
    block = MMRecBlock(config)
    start = time.perf_counter()
    rows = []
    for length in args.lengths:
        row = bench_length(block, args.batch, length, args.repeats)
        rows.append(row)
        seq, hyb, core = row["sequential"], row["hybrid"], row["core_loop_only"]
        print(f"L={length:5d} speed-up fwd {seq['forward_s'] / hyb['forward_s']:.1f}x, "
              f"fwd+bwd {seq['forward_backward_s'] / hyb['forward_backward_s']:.1f}x; "
              f"hybrid / core loop fwd {hyb['forward_s'] / core['forward_s']:.2f}", flush=True)
    result = {
        "description": "median seconds of MMRecBlock (sequential) vs hybrid_forward vs the core loop alone",
        "device": "cpu", "processor": platform.processor() or platform.machine(),
        "torch_version": torch.__version__, "threads": torch.get_num_threads(), "dtype": "float32",
        "batch": args.batch, "config": vars(config), "total_seconds": time.perf_counter() - start,
        "rows": rows,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
