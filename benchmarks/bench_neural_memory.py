"""Time and memory of the neural memory's three forms of write-and-read (chapter 4).

All three compute the same ``y_t = M_t(q_t)`` and the same final state for a given chunk size:

* ``sequential``: ``NeuralMemory.forward_sequential``, the token loop of eqs. (8)-(15);
* ``materialized``: ``forward_materialized``, chapter 4's chunk-parallel form: all gradients of a
  chunk at once (``torch.func``), momentum and forgetting by the associative scan, which builds the
  fast weights of every token, ``(b, c, P)`` numbers per chunk;
* ``dual``: ``forward``, the dual form: closed-form gradients as outer products, a ``c x c``
  coefficient matrix, per-token weights never built.

Timed: forward alone (no autograd) and forward + backward to every learned parameter (what training
does), median seconds over round-robin repeats, float32 on CPU, one thread. Memory: how far the
resident set grows during one forward + backward after a warm-up (``common.step_memory_bytes``,
each in a fresh process). Three sweeps: sequence length at ``--dim``/``--chunk-size``; chunk size
at n = 512; step memory against length for the two chunk-parallel forms at ``--memory-dim``.
Writes ``book/results/neural_memory_benchmark.json``.

    .venv/bin/python benchmarks/bench_neural_memory.py        # about 5 minutes
"""

import argparse
import pathlib
import time

import torch

from common import RESULTS, environment, median_seconds, step_memory_bytes, write_json
from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryConfig

FORMS = {"dual": "forward", "materialized": "forward_materialized", "sequential": "forward_sequential"}


def build_step(dim: int, chunk_size: int, batch: int, length: int, form: str, backward: bool = True):
    """One call of a form on random input: forward, and backward to every parameter if asked."""
    torch.manual_seed(0)
    memory = NeuralMemory(NeuralMemoryConfig(dim=dim, chunk_size=chunk_size))
    x = torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(length))
    forward = getattr(memory, FORMS[form])
    params = list(memory.parameters())

    def step() -> None:
        if not backward:
            with torch.no_grad():
                forward(x)
            return
        y, _ = forward(x)
        torch.autograd.grad(y.square().mean(), params)
    return step


def timed(dim: int, chunk_size: int, batch: int, length: int, repeats: int, forms: tuple) -> dict:
    """Median forward and forward+backward seconds of the given forms at one setting."""
    jobs = {}
    for form in forms:
        jobs[f"{form}/forward_s"] = build_step(dim, chunk_size, batch, length, form, backward=False)
        jobs[f"{form}/forward_backward_s"] = build_step(dim, chunk_size, batch, length, form)
    medians = median_seconds(jobs, repeats)
    row: dict = {"n": length, "chunk_size": chunk_size}
    for form in forms:
        row[form] = {kind: round(medians[f"{form}/{kind}"], 6) for kind in ("forward_s", "forward_backward_s")}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--loop-max-length", type=int, default=256, help="longest n for the token loop")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--memory-dim", type=int, default=128)
    parser.add_argument("--memory-chunk-size", type=int, default=64)
    parser.add_argument("--memory-lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--materialized-max-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "neural_memory_benchmark.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    by_length = []
    for n in args.lengths:
        forms = tuple(f for f in FORMS if f != "sequential" or n <= args.loop_max_length)
        row = timed(args.dim, args.chunk_size, args.batch, n, args.repeats, forms)
        by_length.append(row)
        print(row, flush=True)
    by_chunk = []
    for c in args.chunk_sizes:
        row = timed(args.dim, c, args.batch, 512, args.repeats, ("dual", "materialized"))
        by_chunk.append(row)
        print(row, flush=True)
    memory = []
    for n in args.memory_lengths:
        row = {"n": n}
        for form in ("dual", "materialized"):
            if form == "dual" or n <= args.materialized_max_length:
                row[form] = step_memory_bytes(build_step, dim=args.memory_dim, chunk_size=args.memory_chunk_size,
                                              batch=args.batch, length=n, form=form)
        memory.append(row)
        print(row, flush=True)
    write_json(args.out, {
        "what": "NeuralMemory write-and-read y_t = M_t(q_t): median seconds (forward; forward + backward "
                "to all parameters) and step memory (resident-set growth in one forward + backward, "
                "fresh process), CPU, float32, one thread",
        "environment": environment(), "batch": args.batch, "repeats": args.repeats,
        "config": vars(NeuralMemoryConfig(dim=args.dim, chunk_size=args.chunk_size)),
        "memory_config": vars(NeuralMemoryConfig(dim=args.memory_dim, chunk_size=args.memory_chunk_size)),
        "total_seconds": round(time.perf_counter() - start, 1),
        "by_length": by_length, "by_chunk_size": by_chunk, "step_memory_by_length": memory,
    })


if __name__ == "__main__":
    main()
