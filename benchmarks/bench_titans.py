"""Our neural memory and MAC model against the public ``titans-pytorch`` package, on CPU.

``titans-pytorch`` (lucidrains, MIT) is a benchmark-only dependency, never one of the book: this
script makes its own virtual environment ``.venv-titans`` next to ``.venv`` the first time (about a
minute: ``torch==2.13.0``, the CPU build on this machine's disk, ``titans-pytorch`` at the pinned
version below and this repository with ``-e .``), then runs itself again inside it.

Measured, float32 on one CPU thread, batch 2:

* ``neural_memory``: the memory module alone, ``y, state = memory(x)`` on x (b, n, d), then a
  backward pass from ``y.square().mean()`` to its parameters and to x. Ours:
  ``NeuralMemory(NeuralMemoryConfig(dim, chunk_size))`` (MLP 2 layers, expansion 4). Theirs:
  ``titans_pytorch.NeuralMemory(dim, chunk_size, model=MemoryMLP(dim, depth=2, expansion_factor=4))``,
  the rest at its defaults (learned per-token step size, chunk-level momentum and decay). Not the
  same computation: ours reads ``y_t = M_t(q_t)`` with the memory after every token <= t and takes
  each chunk's gradients at the weights the chunks before it left (eq. 16), chunk after chunk;
  theirs takes every chunk's gradients at the weights the call began with, all chunks at once, and
  reads per chunk, the weights left by the last complete chunk. dim 64 and 128, chunk 16 and 64,
  n = 256 ... 4096.
* ``model``: a training step (forward, next-token cross-entropy, backward, AdamW step, zero_grad)
  of our ``MACTransformer`` and their ``MemoryAsContextTransformer`` at about the same number of
  trained parameters (see ``OURS_MODEL`` and ``TITANS_MODEL``), dim 64, depth 2, 4 heads,
  segment 64, memory chunk 16, n = 512, 1024, 2048.

Time: median over ``--repeats`` after a warm-up call, ours and theirs taking turns in every
repeat, each with the CPU's flush-to-zero off (``step_s``, PyTorch's default) and on
(``step_s_flush_to_zero``: subnormal floats treated as zero, see ``bench_subnormal.py``).
Memory: resident-set growth during one call after a warm-up call, each in a fresh process
(:func:`common.step_memory_bytes`). Writes ``book/results/titans_comparison.json``.

    python3 benchmarks/bench_titans.py            # full sizes (sets up .venv-titans if missing)
    python3 benchmarks/bench_titans.py --smoke    # tiny sizes, to check it runs; writes nothing
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-titans"
TORCH_PIN = "2.13.0"                 # the CPU build on this machine's disk; another version downloads GBs
TITANS_PIN = "0.5.5"
_REEXEC = "MAC_BENCH_TITANS_VENV"    # set before running again in the venv, against a loop


def venv_python() -> pathlib.Path:
    return VENV / "bin" / "python"


def venv_ready() -> bool:
    """Whether ``.venv-titans`` imports the pinned torch, the pinned titans-pytorch and mac_minimal."""
    check = ("import torch, titans_pytorch, mac_minimal, importlib.metadata as m; "
             f"assert torch.__version__.split('+')[0] == {TORCH_PIN!r}; "
             f"assert m.version('titans-pytorch') == {TITANS_PIN!r}")
    return venv_python().exists() and subprocess.run([venv_python(), "-c", check],
                                                     capture_output=True).returncode == 0


def enter_venv() -> None:
    """Create ``.venv-titans`` if missing or incomplete, then run this script again inside it."""
    if pathlib.Path(sys.prefix).resolve() == VENV.resolve():
        return
    if os.environ.get(_REEXEC):
        sys.exit(f"ran again to enter {VENV}, but sys.prefix is {sys.prefix}")
    if not venv_ready():
        print(f"setting up {VENV}: torch=={TORCH_PIN}, titans-pytorch=={TITANS_PIN}, -e {ROOT}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([venv_python(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        f"torch=={TORCH_PIN}", f"titans-pytorch=={TITANS_PIN}", "-e", ROOT], check=True)
        if not venv_ready():
            sys.exit(f"{VENV} was set up but does not import torch {TORCH_PIN}, titans_pytorch and mac_minimal")
    os.environ[_REEXEC] = "1"
    os.execv(venv_python(), [str(venv_python()), str(pathlib.Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":   # before the imports below, which need the venv (not in spawned children)
    enter_venv()

import dataclasses  # noqa: E402
import importlib.metadata  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from titans_pytorch import MemoryAsContextTransformer, MemoryMLP  # noqa: E402
from titans_pytorch import NeuralMemory as TitansNeuralMemory  # noqa: E402

from common import (RESULTS, environment, mac_config, median_seconds, next_token_loss, step_memory_bytes,  # noqa: E402
                    training_step, save_results, parse_benchmark_args, with_flush, TITANS_SIZED_MAC)
from mac_minimal.layers import num_parameters  # noqa: E402
from mac_minimal.model import MACTransformer  # noqa: E402
from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryConfig  # noqa: E402

OUT = RESULTS / "titans_comparison.json"
IMPLS = ("ours", "titans")
BATCH = 2

MEMORY_GRID = {"dims": [64, 128], "chunk_sizes": [16, 64], "lengths": [256, 512, 1024, 2048, 4096]}
SMOKE_MEMORY_GRID = {"dims": [32], "chunk_sizes": [16], "lengths": [64, 128]}

# Whole model. Theirs: the README's MAC (4 persistent and 16 long-term memory tokens) at our
# width/depth/heads, library defaults otherwise (4 hyper-connection residual streams, GEGLU
# feed-forward ff_mult 4, axial positional embedding, value residual). Each of their memories
# also holds a template copy of its memory MLP that is never trained (32,832 parameters per
# layer at dim 64), so parameters are matched on those that receive a gradient: ours with a
# wider feed-forward (ffn_mult 8 instead of the book's 4) -> 290,182 vs their 278,292 trained
# (343,972 in all).
OURS_MODEL = TITANS_SIZED_MAC
TITANS_MODEL = dict(num_tokens=256, dim=64, depth=2, heads=4, dim_head=16, segment_len=64,
                    num_persist_mem_tokens=4, num_longterm_mem_tokens=16, neural_memory_segment_len=16)
MODEL_LENGTHS = [512, 1024, 2048]
SMOKE_MODEL_LENGTHS = [128]
MAX_PARAMETER_GAP = 0.15


def both_flush_settings(jobs: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of every job with the CPU's flush-to-zero off (``step_s``, PyTorch's default)
    and on (``step_s_flush_to_zero``), all four interleaved."""
    settings = {"step_s": False, "step_s_flush_to_zero": True}
    seconds = median_seconds({f"{impl} {key}": with_flush(flush, job) for impl, job in jobs.items()
                              for key, flush in settings.items()}, repeats)
    return {key: {impl: seconds[f"{impl} {key}"] for impl in jobs} for key in settings}


# ---------------------------------------------------------------- neural memory alone
def make_memory(impl: str, dim: int, chunk_size: int) -> torch.nn.Module:
    if impl == "ours":
        return NeuralMemory(NeuralMemoryConfig(dim=dim, chunk_size=chunk_size))
    return TitansNeuralMemory(dim=dim, chunk_size=chunk_size,
                              model=MemoryMLP(dim, depth=2, expansion_factor=4))


def build_memory_job(impl: str, dim: int, chunk_size: int, seq_len: int, batch: int, seed: int = 0):
    """Forward + backward of one memory on fixed random x (b, n, d); module-level for
    :func:`common.step_memory_bytes`. Both modules return ``(y, state)`` with y (b, n, d)."""
    torch.manual_seed(seed)
    memory = make_memory(impl, dim, chunk_size)
    x = torch.randn(batch, seq_len, dim, generator=torch.Generator().manual_seed(seed)).requires_grad_()

    def job() -> None:
        y, _ = memory(x)
        y.square().mean().backward()
        memory.zero_grad(set_to_none=True)
        x.grad = None

    return job


def memory_parameter_counts(impl: str, dim: int) -> dict[str, int]:
    """All parameters of one memory, and those that receive a gradient (one short backward)."""
    memory = make_memory(impl, dim, chunk_size=16)
    y, _ = memory(torch.randn(1, 32, dim))
    y.square().mean().backward()
    return _counts(memory)


def _counts(module: torch.nn.Module) -> dict[str, int]:
    return {"total": num_parameters(module),
            "trained": sum(p.numel() for p in module.parameters() if p.grad is not None)}


def measure_memory_grid(grid: dict, repeats: int) -> list[dict]:
    rows = []
    for dim in grid["dims"]:
        for chunk_size in grid["chunk_sizes"]:
            for seq_len in grid["lengths"]:
                size = dict(dim=dim, chunk_size=chunk_size, seq_len=seq_len, batch=BATCH)
                seconds = both_flush_settings({impl: build_memory_job(impl, **size) for impl in IMPLS}, repeats)
                memory = {impl: step_memory_bytes(build_memory_job, impl=impl, **size) for impl in IMPLS}
                rows.append({"dim": dim, "chunk_size": chunk_size, "n": seq_len, **seconds,
                             "step_memory_bytes": memory})
                print(f"memory d={dim:3d} c={chunk_size:2d} n={seq_len:4d}: " + _describe(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------- whole model
def titans_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Their next-token cross-entropy: ``forward(tokens, return_loss=True)`` shifts by itself."""
    return model(tokens, return_loss=True)


def make_model(impl: str) -> tuple[torch.nn.Module, object]:
    """The model and its loss function (model, tokens (b, n + 1)) -> scalar."""
    if impl == "ours":
        return MACTransformer(mac_config(**OURS_MODEL)), next_token_loss
    return MemoryAsContextTransformer(**TITANS_MODEL), titans_loss


def build_model_job(impl: str, seq_len: int, batch: int, seed: int = 0):
    """One training step of a fresh model on fixed random tokens (b, n + 1)."""
    torch.manual_seed(seed)
    model, loss_fn = make_model(impl)
    tokens = torch.randint(0, 256, (batch, seq_len + 1), generator=torch.Generator().manual_seed(seed))
    return training_step(model, tokens, loss_fn)


def parameter_counts(impl: str) -> dict[str, int]:
    """All parameters, and those that receive a gradient from the loss (one short backward)."""
    torch.manual_seed(0)
    model, loss_fn = make_model(impl)
    loss_fn(model, torch.randint(0, 256, (1, 129))).backward()
    return _counts(model)


def measure_models(lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    for seq_len in lengths:
        size = dict(seq_len=seq_len, batch=BATCH)
        seconds = both_flush_settings({impl: build_model_job(impl, **size) for impl in IMPLS}, repeats)
        memory = {impl: step_memory_bytes(build_model_job, impl=impl, **size) for impl in IMPLS}
        rows.append({"n": seq_len, **seconds, "step_memory_bytes": memory})
        print(f"model n={seq_len:4d}: " + _describe(rows[-1]), flush=True)
    return rows


def _describe(row: dict) -> str:
    mib = {k: "?" if v is None else f"{v / 2**20:.1f}" for k, v in row["step_memory_bytes"].items()}
    return ", ".join(f"{impl} {row['step_s'][impl] * 1e3:.1f} ms (flush-to-zero "
                     f"{row['step_s_flush_to_zero'][impl] * 1e3:.1f}) {mib[impl]} MiB" for impl in IMPLS)


def main() -> None:
    args = parse_benchmark_args(__doc__, OUT, repeats=5, what="timed calls per implementation")
    start = time.perf_counter()
    params = {impl: parameter_counts(impl) for impl in IMPLS}
    gap = params["titans"]["trained"] / params["ours"]["trained"] - 1
    print(f"model parameters: ours {params['ours']}, titans {params['titans']} (trained: {gap:+.1%})", flush=True)
    if abs(gap) > MAX_PARAMETER_GAP:
        sys.exit(f"trained parameter counts differ by {gap:+.1%}, more than {MAX_PARAMETER_GAP:.0%}")
    grid = SMOKE_MEMORY_GRID if args.smoke else MEMORY_GRID
    memory_params = {dim: {impl: memory_parameter_counts(impl, dim) for impl in IMPLS} for dim in grid["dims"]}
    memory_rows = measure_memory_grid(grid, args.repeats)
    model_rows = measure_models(SMOKE_MODEL_LENGTHS if args.smoke else MODEL_LENGTHS, args.repeats)
    payload = {
        "description": "our NeuralMemory and MACTransformer against titans-pytorch's NeuralMemory and "
                       "MemoryAsContextTransformer, CPU",
        "titans_pytorch": importlib.metadata.version("titans-pytorch"),
        "step_s": f"median seconds over repeats after one warm-up call, implementations interleaved, "
                  f"{torch.get_num_threads()} thread",
        "step_s_flush_to_zero": "the same with torch.set_flush_denormal(True) (subnormal floats treated as "
                                "zero), interleaved with step_s",
        "step_memory_bytes": "resident-set growth during one call after a warm-up call, each in a fresh "
                             "process: VmHWM after minus VmRSS before (peak reset via /proc/self/clear_refs "
                             "after gc.collect() and malloc_trim(0))",
        "smoke": args.smoke, "repeats": args.repeats, "batch": BATCH, "environment": environment(),
        "neural_memory": {
            "call": "y, _ = memory(x); y.square().mean().backward() (to the parameters and x)",
            "ours": {"call": "mac_minimal.neural_memory.NeuralMemory(NeuralMemoryConfig(dim, chunk_size))",
                     "config_defaults": {k: v for k, v in dataclasses.asdict(NeuralMemoryConfig()).items()
                                         if k not in ("dim", "chunk_size")}},
            "titans": {"call": "titans_pytorch.NeuralMemory(dim, chunk_size, "
                               "model=MemoryMLP(dim, depth=2, expansion_factor=4)), the rest at its defaults"},
            "parameters_by_dim": memory_params,
            "note": "not the same computation. Ours reads y_t = M_t(q_t), the memory after every token <= t "
                    "(per-token weights, exact), and takes each chunk's gradients at the weights the chunks "
                    "before it left (eq. 16), one chunk after another. Theirs takes the gradients of every "
                    "chunk at the weights the call began with (all chunks at once) and reads chunk-level "
                    "weights: a token reads the weights left by the last complete chunk; its step size is "
                    "per token, but momentum and decay are per chunk (from the chunk's mean), the gradient "
                    "is summed over the chunk, no gradient clipping, RMSNorm on the input, a residual "
                    "LayerNorm around the memory MLP.",
            "rows": memory_rows},
        "model": {
            "ours": {"class": "mac_minimal.model.MACTransformer", "config": dataclasses.asdict(mac_config(**OURS_MODEL))},
            "titans": {"class": "titans_pytorch.MemoryAsContextTransformer", "kwargs": TITANS_MODEL,
                       "loss": "model(tokens, return_loss=True)"},
            "parameters": params,
            "note": "parameters matched on those that receive a gradient: each titans NeuralMemory keeps "
                    "an untrained template of its memory MLP. Theirs adds the neural memory's read to the "
                    "residual stream over the whole sequence at once and attends over learned long-term "
                    "memory tokens; ours runs segment by segment and attends over the retrieved vectors.",
            "rows": model_rows},
        "total_seconds": time.perf_counter() - start,
    }
    save_results(payload, args.out, OUT, args.smoke)


if __name__ == "__main__":
    main()
