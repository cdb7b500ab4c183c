"""Subnormal floats in the neural memory, and what they cost a CPU step.

A float32 below ``torch.finfo(torch.float32).tiny`` (about 1.2e-38) but not zero is *subnormal*;
x86 CPUs compute with subnormal operands far more slowly than with normal ones. The neural memory's
write multiplies small factors together (step sizes, momentum, decays, their products over a chunk),
and on long inputs some of its intermediates fall into that range. ``torch.set_flush_denormal(True)``
makes the CPU treat them as zero (flush-to-zero), which changes only those values.

For the memory alone (:class:`~mac_minimal.neural_memory.NeuralMemory`, forward and backward of
``y.square().mean()``, batch 2, as ``bench_titans.py`` times it), this script records, float32, one
thread:

* ``subnormal_results``: how many float32 values that the operations of one forward and backward
  produce are subnormal (counted with a ``TorchDispatchMode``, flush off);
* ``step_s``: median seconds with flush-to-zero off (the default) and on, the two interleaved
  (:func:`common.median_seconds`);
* ``largest_weight``: the largest ``|W1|`` and ``|W2|`` entry of the memory's fast weights at the
  start (``M_0``) and after the input, to see whether the weights decay into that range;
* the same at the memory's old step-size cap (``max_lr=0.1``) for one size;
* with ``--trained RUN``, the same counts and times for a trained one-fact recall model (the
  checkpoint a trainer run left in ``RUN``): one training step of its own setting, and the
  evaluation's forward on streams 1, 4 and 16 times its training length (chapter 8's horizon).

Writes ``book/results/subnormal.json``.

    .venv/bin/python benchmarks/compiled_recall_run.py        # once: trains runs/compiled_recall_run/
    .venv/bin/python benchmarks/bench_subnormal.py --trained runs/compiled_recall_run/eager-s0  # ~3 min
    .venv/bin/python benchmarks/bench_subnormal.py --smoke    # toy sizes, seconds; writes nothing
"""

import pathlib
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from common import (RESULTS, environment, load_recall_run, median_seconds, parse_benchmark_args, save_results,
                    with_flush)
from mac_minimal.data import recall_batch
from mac_minimal.evaluation import loss_and_state, per_token_loss_and_correct
from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryConfig
from mac_minimal.task_data import make_batch, prepare_data

OUT = RESULTS / "subnormal.json"
SIZES = [dict(dim=128, chunk_size=64, n=1024), dict(dim=128, chunk_size=64, n=2048),
         dict(dim=128, chunk_size=64, n=4096), dict(dim=128, chunk_size=16, n=2048),
         dict(dim=64, chunk_size=64, n=4096), dict(dim=128, chunk_size=64, n=2048, max_lr=0.1)]
SMOKE_SIZES = [dict(dim=16, chunk_size=8, n=32), dict(dim=16, chunk_size=8, n=32, max_lr=0.1)]


class CountSubnormals(TorchDispatchMode):
    """Counts the subnormal float32 values in the results of every operation run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.values = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.values += int(((t != 0) & (t.abs() < torch.finfo(torch.float32).tiny)).sum())
        return out


def memory_step(dim: int, chunk_size: int, n: int, max_lr: float | None = None):
    """Forward and backward of a fresh memory (seed 0) on random input (2, n, dim), and the
    largest fast-weight entries at the start and after the input."""
    torch.manual_seed(0)
    cap = {} if max_lr is None else {"max_lr": max_lr}
    memory = NeuralMemory(NeuralMemoryConfig(dim=dim, chunk_size=chunk_size, **cap))
    x = torch.randn(2, n, dim, requires_grad=True)

    def step() -> None:
        y, _ = memory(x)
        y.square().mean().backward()

    with torch.no_grad():
        _, state = memory(x)
    largest = {"start": {"W1": memory.init_w1.abs().max().item(), "W2": memory.init_w2.abs().max().item()},
               "after": {"W1": state.weights[0].abs().max().item(), "W2": state.weights[1].abs().max().item()}}
    return step, largest


def described(step_s: dict[str, float]) -> str:
    """``flush off 243 ms, flush on 244 ms`` for a row's ``step_s``."""
    return ", ".join(f"{k} {s * 1e3:.0f} ms" for k, s in step_s.items())


def count_and_time(step, repeats: int) -> dict:
    """Subnormal results of one call of ``step`` (flush off) and its median seconds, flush off and on."""
    counter = CountSubnormals()
    with counter:
        step()
    seconds = median_seconds({"flush off": with_flush(False, step), "flush on": with_flush(True, step)}, repeats)
    return {"subnormal_results": counter.values, "step_s": seconds}


def trained_model(run: pathlib.Path, repeats: int) -> dict:
    """The one-fact recall model a trainer run left in ``run`` (and the step it was saved at): one
    training step (forward and backward of a training batch of its own setting) and the evaluation's
    forward on 32 streams of 1, 4 and 16 times its training length, the fact in the middle."""
    model, cfg, saved_at = load_recall_run(run)
    batch = make_batch(cfg, prepare_data(cfg), torch.Generator().manual_seed(0))

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        loss_and_state(model, batch, torch.device("cpu"))[0].backward()

    model.train()
    rows = [{"call": "training step", "n": cfg.seq_len, "batch": cfg.batch_size,
             **count_and_time(train_step, repeats)}]
    model.eval()
    for times in (1, 4, 16):
        n = times * cfg.seq_len
        stream = recall_batch(32, n, n // 2, cfg.num_facts, torch.Generator().manual_seed(0), cfg.recall_task)

        @torch.no_grad()
        def read() -> None:
            per_token_loss_and_correct(model, stream, torch.device("cpu"))

        rows.append({"call": "evaluation forward", "n": n, "batch": 32, **count_and_time(read, repeats)})
    for row in rows:
        print(f"trained model, {row['call']}, n={row['n']}: {row['subnormal_results']:,} subnormal results;",
              described(row["step_s"]), flush=True)
    return {"run": str(run), "step": saved_at, "rows": rows}


def main() -> None:
    args = parse_benchmark_args(
        __doc__, OUT, repeats=5, what="timed steps per job",
        add_arguments=lambda parser: parser.add_argument(
            "--trained", type=pathlib.Path, default=None, metavar="RUN",
            help="also measure the recall model a trainer run left in RUN/checkpoint.pt"))
    if not torch.set_flush_denormal(False):
        raise SystemExit("this CPU cannot flush subnormals to zero (torch.set_flush_denormal)")
    start = time.perf_counter()
    rows = []
    for size in SMOKE_SIZES if args.smoke else SIZES:
        step, largest = memory_step(**size)
        rows.append({**size, "max_lr": size.get("max_lr", NeuralMemoryConfig().max_lr),
                     **count_and_time(step, args.repeats), "largest_weight": largest})
        print(size, f"{rows[-1]['subnormal_results']:,} subnormal results; largest W1 after "
              f"{largest['after']['W1']:.1e};", described(rows[-1]["step_s"]), flush=True)
    payload = {"what": __doc__.split("\n\n")[0], "call": "y, _ = memory(x); y.square().mean().backward(), batch 2",
               "smoke": args.smoke, "repeats": args.repeats, "environment": environment(), "rows": rows}
    if args.trained is not None:
        payload["trained_model"] = trained_model(args.trained, args.repeats)
    payload["total_seconds"] = time.perf_counter() - start
    save_results(payload, args.out, OUT, args.smoke)


if __name__ == "__main__":
    main()
