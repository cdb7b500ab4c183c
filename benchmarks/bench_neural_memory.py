"""Time the chunk-parallel write of the neural memory against the token loop (chapter 4).

``NeuralMemory.write`` takes all gradients of a chunk at once (``torch.func.grad`` + ``vmap``)
and solves momentum and forgetting with the associative scan (eqs. 16-18);
``NeuralMemory.write_sequential`` is the loop over tokens (eqs. 8-14). Both compute the
same state for the same ``chunk_size``. Timed: the write alone (no autograd) and the write
followed by a backward pass to every learned parameter (what training does), median
seconds over repeats, methods timed round-robin, float32 on CPU. Two sweeps: sequence
length at the main chunk size, and chunk size at n = 512 (the loop costs the same for
every chunk size). Writes ``book/results/neural_memory_benchmark.json``.

    .venv/bin/python benchmarks/bench_neural_memory.py        # about 1-2 minutes
"""

import argparse
import json
import pathlib
import platform
import statistics
import time
from typing import Callable, Dict

import torch

from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryConfig, NeuralMemoryState

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "book" / "results" / "neural_memory_benchmark.json"


def summary(state: NeuralMemoryState) -> torch.Tensor:
    """A scalar of the final weights, to backpropagate through the whole write."""
    return sum(w.square().mean() for w in state.weights)


def time_jobs(jobs: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """Median seconds of each job; one warm-up call each, then round-robin repeats."""
    for job in jobs.values():
        job()
    times: Dict[str, list] = {key: [] for key in jobs}
    for _ in range(repeats):
        for key, job in jobs.items():
            start = time.perf_counter()
            job()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def bench(dim: int, chunk_size: int, batch: int, length: int, repeats: int, forms: tuple) -> dict:
    """Median write and write+backward seconds of the requested forms at one setting."""
    torch.manual_seed(0)
    memory = NeuralMemory(NeuralMemoryConfig(dim=dim, chunk_size=chunk_size))
    x = torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(length))
    params = list(memory.parameters())
    methods = {"parallel": memory.write, "sequential": memory.write_sequential}
    jobs: Dict[str, Callable[[], object]] = {}
    for name in forms:
        write = methods[name]

        def forward(write=write):
            with torch.no_grad():
                write(x, memory.init_state(batch))

        def forward_backward(write=write):
            torch.autograd.grad(summary(write(x, memory.init_state(batch))), params, allow_unused=True)
        jobs[f"{name}/write_s"], jobs[f"{name}/write_backward_s"] = forward, forward_backward
    medians = time_jobs(jobs, repeats)
    row: dict = {"n": length, "chunk_size": chunk_size, "repeats": repeats}
    for name in forms:
        row[name] = {"write_s": medians[f"{name}/write_s"],
                     "write_backward_s": medians[f"{name}/write_backward_s"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256, 512])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    by_length = []
    for length in args.lengths:
        row = bench(args.dim, args.chunk_size, args.batch, length, args.repeats, ("parallel", "sequential"))
        by_length.append(row)
        par, seq = row["parallel"], row["sequential"]
        print(f"n={length:5d} c={args.chunk_size}: speed-up write {seq['write_s'] / par['write_s']:.1f}x, "
              f"write+backward {seq['write_backward_s'] / par['write_backward_s']:.1f}x", flush=True)
    by_chunk = []
    for chunk_size in args.chunk_sizes:
        row = bench(args.dim, chunk_size, args.batch, 512, args.repeats, ("parallel",))
        by_chunk.append(row)
        print(f"n=  512 c={chunk_size}: parallel write {row['parallel']['write_s'] * 1e3:.1f} ms", flush=True)
    result = {
        "description": "median seconds of NeuralMemory.write (chunk-parallel) vs write_sequential (token loop)",
        "device": "cpu", "processor": platform.processor() or platform.machine(),
        "torch_version": torch.__version__, "threads": torch.get_num_threads(), "dtype": "float32",
        "batch": args.batch, "config": vars(NeuralMemoryConfig(dim=args.dim, chunk_size=args.chunk_size)),
        "total_seconds": time.perf_counter() - start,
        "by_length": by_length, "by_chunk_size": by_chunk,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} in {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
