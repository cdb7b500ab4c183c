"""Where the trainer runs: the device, the processes of a ``torchrun`` job, mixed precision, memory.

One process trains on one device. Under ``torchrun --nproc_per_node=N`` there are N processes
(ranks); each trains on its own data stream, :func:`data_parallel` averages their gradients
(DistributedDataParallel), and only rank 0 (:attr:`Runtime.is_main`) writes. Every
``torch.distributed`` call of the trainer is in this module; with one process none is made.
"""

import os
import platform
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Runtime", "DeviceUnavailableError", "setup_runtime", "close_runtime", "data_parallel",
           "average_over_processes", "gather_objects", "parameter_spread", "autocast", "device_name",
           "reset_peak_memory", "peak_memory_bytes"]


@dataclass
class Runtime:
    """Where this process runs: its rank among ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DeviceUnavailableError(ValueError):
    """``cuda`` was requested on a machine where CUDA is not available."""


def setup_runtime(requested: str) -> Runtime:
    """Pick the device (``auto`` = cuda if available) and, when ``torchrun`` started several
    processes (``WORLD_SIZE > 1``), join the process group: nccl between GPUs, gloo on CPUs.

    Raises :class:`DeviceUnavailableError` for ``cuda`` on a machine without CUDA.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda was requested, but torch.cuda.is_available() is False on "
                                     "this machine (use --device cpu or auto)")
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Runtime(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(dist.get_rank(), world_size, device)


def close_runtime(runtime: Runtime) -> None:
    """Leave the process group that :func:`setup_runtime` joined (nothing to do for one process)."""
    if runtime.world_size > 1:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Several processes: each call below is a collective, so every rank must make it.

def data_parallel(model: nn.Module, runtime: Runtime) -> nn.Module:
    """``model`` itself for one process; else wrapped in DistributedDataParallel, which averages the
    gradients over the processes during ``backward`` (the wrapper is what trains, ``model`` is saved)."""
    if runtime.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)


def average_over_processes(values: Tensor, runtime: Runtime) -> Tensor:
    """``values`` averaged over the processes, in place; returned as they are for one process."""
    if runtime.world_size > 1:
        dist.all_reduce(values)                        # a sum (gloo has no average)
        values /= runtime.world_size
    return values


def gather_objects(local: Any, runtime: Runtime) -> list[Any]:
    """Every rank's ``local`` (any picklable object), in rank order."""
    if runtime.world_size == 1:
        return [local]
    gathered: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(gathered, local)
    return gathered


def parameter_spread(model: nn.Module, runtime: Runtime) -> float:
    """Largest |difference| between any rank's parameters and rank 0's (0.0 when DDP kept them equal)."""
    if runtime.world_size == 1:
        return 0.0
    flat = nn.utils.parameters_to_vector(model.parameters()).detach()
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    spread = (flat - reference).abs().max()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread)


# ---------------------------------------------------------------------------------------------
# The device: precision, name, memory.

def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA, a no-op on the CPU. On tensor cores bfloat16 matrix products run several
    times faster and keep float32's exponent range (no loss scaling); a CPU gains nothing reliable from
    it, so CPU runs stay float32 and bit-for-bit reproducible."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def device_name(device: torch.device) -> str:
    """``"NVIDIA H100 ..."`` on CUDA, ``"cpu x86_64 (4 threads)"`` on the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"


def reset_peak_memory(device: torch.device) -> None:
    """Start :func:`peak_memory_bytes` afresh on CUDA (the CPU's peak resident size cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """This process's peak memory so far, in bytes. CUDA: the most the caching allocator handed out
    on ``device`` (``torch.cuda.max_memory_allocated``: tensors only). CPU: the peak resident set
    size of the whole process (``ru_maxrss``: Python, torch's libraries and the data included, so a
    tiny model still shows a few hundred MB); None where the ``resource`` module is missing (Windows)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux kilobytes
