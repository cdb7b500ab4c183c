"""Where a MAC training step's time goes on a GPU: kernels launched, time the GPU is busy, and the
same step replayed as a CUDA graph.

``gpu_record.py`` measured MAC's eager training step on an H200 at the size of ``bench_titans.py``
(width 64, depth 2, segments of 64, memory chunks of 16, batch 8) at 1.62 s for 1,024 tokens, while
MAC without memory took 22 ms and ``titans-pytorch`` 0.17 s. This script says why, for each model:

* ``eager_s``: the median seconds of one training step (forward, loss, backward, AdamW), as there;
* ``kernels``: the CUDA kernels one step launches, and ``gpu_busy_s``, the sum of their run times
  (``torch.profiler``): a step far longer than its kernels' sum waits on the CPU launching them;
* ``graph_s``: the step with forward and backward captured once as CUDA graphs
  (``torch.cuda.make_graphed_callables``) and replayed, the AdamW step eager: what the same kernels
  take with no Python and no launch cost between them. An error is recorded instead where a model
  cannot be captured.

Writes ``book/results/gpu/profile.json``. ``--smoke`` runs the eager timing at a toy size on any
device (profile and graphs need CUDA) and writes under ``--out`` (default: a temporary folder).

    python3 benchmarks/gpu_profile.py            # on the GPU machine, about a minute
    python3 benchmarks/gpu_profile.py --smoke    # anywhere, to check the script
"""

import argparse
import pathlib
import statistics
import tempfile
import time
from typing import Callable

import torch
from torch import nn

from common import RESULTS, TITANS_SIZED_MAC, mac_config, next_token_loss, training_step, write_json
from mac_minimal.model import MACTransformer

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class StepLoss(nn.Module):
    """``loss_fn(model, tokens)`` as a module of one tensor argument, so it can be captured."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, tokens)


def seconds(step: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``step()`` after one warm-up call, the device synchronised."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def kernel_profile(step: Callable[[], object]) -> dict:
    """Kernels launched by one ``step()`` and the sum of their GPU time, from ``torch.profiler``."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        step()
        torch.cuda.synchronize()
    events = profile.key_averages()
    launches = sum(e.count for e in events if "LaunchKernel" in e.key)
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(getattr(e, "self_device_time_total", 0) for e in kernels)
    top = sorted(kernels, key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True)[:8]
    return {"kernels": launches, "gpu_busy_s": busy_us / 1e6,
            "top_kernels": [{"name": e.key[:120], "count": e.count,
                             "total_s": getattr(e, "self_device_time_total", 0) / 1e6} for e in top]}


def graphed_step(model: nn.Module, loss_fn: LossFn, tokens: torch.Tensor) -> Callable[[], float]:
    """A training step whose forward and backward replay CUDA graphs captured from ``model``."""
    graphed = torch.cuda.make_graphed_callables(StepLoss(model, loss_fn), (tokens,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> float:
        loss = graphed(tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)       # the captured backward writes into the same .grad
        return loss.item()

    return step


def models(size: dict) -> dict[str, tuple[nn.Module, LossFn]]:
    """MAC and MAC without memory of ``size`` and, if importable, titans-pytorch (at its comparison size)."""
    torch.manual_seed(0)
    found = {"mac": (MACTransformer(mac_config(**size)), next_token_loss),
             "mac_no_memory": (MACTransformer(mac_config(**size, use_memory=False)), next_token_loss)}
    try:
        import bench_titans                              # imports titans_pytorch
        found["titans"] = bench_titans.make_model("titans")
    except ImportError as error:
        print(f"titans-pytorch not importable ({error}); profiling ours only", flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, any device; writes under --out")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="default: book/results/gpu/profile.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = args.out or (pathlib.Path(tempfile.mkdtemp(prefix="gpu_profile_")) / "profile.json" if args.smoke
                       else RESULTS / "gpu" / "profile.json")
    seq_len, batch = (64, 2) if args.smoke else (args.seq_len, 8)
    size = dict(TITANS_SIZED_MAC, dim=16, segment_len=8, chunk_size=4) if args.smoke else TITANS_SIZED_MAC
    tokens = torch.randint(0, 256, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0)).to(device)
    rows = {}
    for name, (model, loss_fn) in models(size).items():
        model.to(device)
        row = {"eager_s": seconds(training_step(model, tokens, loss_fn), repeats=3)}
        if device.type == "cuda":
            row.update(kernel_profile(training_step(model, tokens, loss_fn)))
            try:           # a model with a host synchronisation inside cannot be captured
                row["graph_s"] = seconds(graphed_step(model, loss_fn, tokens), repeats=5)
            except Exception as error:   # recorded, not hidden
                row["graph_error"] = repr(error)[:500]
        rows[name] = row
        print(name, {k: v for k, v in row.items() if k != "top_kernels"}, flush=True)
    write_json(out, {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "smoke": args.smoke, "seq_len": seq_len, "batch": batch,
                     "model_config": size, "models": rows,
                     "what": "one float32 training step: eager_s and graph_s median wall seconds; kernels "
                             "launched and gpu_busy_s (their summed run time) from torch.profiler"})


if __name__ == "__main__":
    main()
