"""Time the ways to compute ``h_t = a_t h_{t-1} + b_t`` against a bandwidth floor (chapter 3).

For each length L (B=4, D=256, float32, CPU, 2 threads, no torch.compile) it records the
median forward time and forward+backward time of: the plain loop, the Blelloch
``associative_scan`` (its default leaves, and leaves of 1 and of 16 positions),
``chunked_scan`` and torch's own
``torch._higher_order_ops.associative_scan``, plus the "floor": one
``torch.add(a, b, out=h)`` over tensors of the same size (read two, write one, no
allocation), the least any scan must cost. At each length the methods are timed
round-robin, in a shuffled order, so that a noisy machine slows them all alike, and the
sweep over lengths runs twice; medians are the headline numbers, best times are recorded too, with the machine's
load average. Writes ``book/results/scan_benchmark.json``.

    .venv/bin/python benchmarks/bench_scan.py            # full run, under a minute on a quiet machine
    .venv/bin/python benchmarks/bench_scan.py --lengths 4096 --out /tmp/scan.json
"""

import argparse
import os
import pathlib
import platform
import random
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from common import RESULTS, time_jobs, write_json
from mac_minimal.scan import scan_sequential
from mac_minimal.scan_kernel import associative_scan, chunked_scan

OUT = RESULTS / "scan_benchmark.json"


def torch_builtin_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch's higher-order associative_scan with our operator (a1, b1) o (a2, b2)."""
    from torch._higher_order_ops import associative_scan as hop_scan

    def combine(left, right):
        (a1, b1), (a2, b2) = left, right
        return a1 * a2, a2 * b1 + b2

    # combine_mode="pointwise" needs CUDA/XPU (and torch.compile); "generic" runs eagerly.
    return hop_scan(combine, (a, b), dim=1, combine_mode="generic")[1]


METHODS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "loop": scan_sequential,
    "associative": associative_scan,
    "associative_leaf1": lambda a, b: associative_scan(a, b, leaf_size=1),  # the textbook tree
    "associative_leaf16": lambda a, b: associative_scan(a, b, leaf_size=16),
    "chunked": chunked_scan,
    "torch_builtin": torch_builtin_scan,
}


def why_builtin_pointwise_fails() -> Optional[str]:
    """The error torch's fast (pointwise) mode gives on CPU without torch.compile, if any."""
    from torch._higher_order_ops import associative_scan as hop_scan
    x = torch.rand(1, 4, 2)
    try:
        hop_scan(lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1]), (x, x), dim=1, combine_mode="pointwise")
    except Exception as err:  # record whatever torch says
        return f"{type(err).__name__}: {err}"
    return None


def repeats_for(length: int, at_4096: int) -> int:
    """More repeats for short sequences (``at_4096`` at L=4096), at least 3."""
    return max(3, round(at_4096 * (4096 / length) ** 0.5))


def make_jobs(length: int, batch: int, dim: int) -> Dict[str, Callable[[], object]]:
    """The floor and, per method, a forward and a forward+backward call at one length."""
    gen = torch.Generator().manual_seed(length)
    a = torch.rand(batch, length, dim, generator=gen) * 0.2 + 0.8
    b = torch.randn(batch, length, dim, generator=gen)
    grad_out = torch.randn(batch, length, dim, generator=gen)
    out = torch.empty_like(b)
    a_req, b_req = a.clone().requires_grad_(), b.clone().requires_grad_()

    def floor():
        torch.add(a, b, out=out)

    def forward(fn):
        return lambda: fn(a, b)

    def forward_backward(fn):
        return lambda: torch.autograd.grad(fn(a_req, b_req), (a_req, b_req), grad_out)

    jobs: Dict[str, Callable[[], object]] = {"floor": floor}
    for name, fn in METHODS.items():
        jobs[f"{name}/forward"] = forward(fn)
        jobs[f"{name}/forward_backward"] = forward_backward(fn)
    return jobs


def summarise(length: int, times: Dict[str, List[float]]) -> dict:
    """Median (and best) times of one length, and their ratios to the floor."""
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    row = {"L": length, "repeats": len(times["floor"]), "floor_s": med["floor"], "floor_min_s": best["floor"],
           "methods": {}}
    for name in METHODS:
        f, fb = f"{name}/forward", f"{name}/forward_backward"
        row["methods"][name] = {"forward_s": med[f], "forward_backward_s": med[fb],
                                "forward_over_floor": med[f] / med["floor"],
                                "forward_backward_over_floor": med[fb] / med["floor"],
                                "forward_min_over_floor_min": best[f] / best["floor"],
                                "forward_backward_min_over_floor_min": best[fb] / best["floor"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="repeats per pass at L=4096")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    load_before = os.getloadavg()
    times: Dict[int, Dict[str, List[float]]] = {length: {} for length in args.lengths}
    order = random.Random(0)
    # Lengths one after the other, all methods of a length round-robin, so that a noisy
    # machine slows them alike; the whole sweep twice, so that a burst of load spoils at
    # most half the repeats of a length. (Round-robin over lengths too would leave each
    # length's tensors idle for seconds, and this VM reclaims idle memory: page faults.)
    for _ in range(args.passes):
        for length in args.lengths:
            jobs = make_jobs(length, args.batch, args.dim)
            timed = time_jobs(jobs, repeats_for(length, args.repeats), order=order)   # shuffled rounds
            for key, seconds in timed.items():
                times[length].setdefault(key, []).extend(seconds)
    rows = [summarise(length, times[length]) for length in args.lengths]
    for row in rows:
        ratios = ", ".join(f"{n} {m['forward_over_floor']:.1f}x/{m['forward_backward_over_floor']:.1f}x"
                           for n, m in row["methods"].items())
        print(f"L={row['L']:6d} floor {row['floor_s'] * 1e3:.3f} ms | fwd/fwd+bwd over floor: {ratios}")
    result = {
        "description": "median seconds for h_t = a_t h_{t-1} + b_t along L; floor = one torch.add(a, b, out=h)",
        "device": "cpu", "processor": platform.processor() or platform.machine(),
        "torch_version": torch.__version__, "threads": torch.get_num_threads(),
        "batch": args.batch, "dim": args.dim, "dtype": "float32", "torch_compile": False,
        "torch_builtin": "torch._higher_order_ops.associative_scan(combine_mode='generic'), eager",
        "torch_builtin_pointwise_error": why_builtin_pointwise_fails(),
        "total_seconds": time.perf_counter() - start,
        "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
        "rows": rows,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
