"""The compiled path: ``torch.compile`` applied to the regions of a model that repeat.

A MAC forward pass is a Python loop (segments, and inside each segment the memory's chunks) around
many small tensor operations; run eagerly, every one of them is a separate kernel launch and a
separate pass over memory. :func:`compile_regions` compiles what repeats, in place:

* every :class:`~mac_minimal.mac_attention.MACAttention` layer: one call is eqs. (21)-(25) for one
  segment (retrieve, attend, the memory's chunked write and read in the dual form of chapter 4,
  combine), called once per segment and layer;
* every block of :class:`~mac_minimal.baseline.FullAttentionTransformer`.

The loops over segments and layers stay in Python, so one graph serves every segment of every
layer (the layers have the same structure; their parameters are the graph's inputs), and the
compile time does not grow with the sequence length or the depth. Each region is compiled with
``fullgraph=True`` (a graph break is an error, not a silent slowdown) and ``dynamic=False`` (one
graph per shape, specialised). A run at one sequence length compiles a few graphs on its first
calls and none after that:

* one graph serves the first segment of a text, which reads the initial memory ``M_0``, and every
  later one, which reads a memory the previous segment wrote: ``NeuralMemory.init_state`` makes
  ``M_0`` the same kind of tensors as a written memory (contiguous copies, a momentum in the
  autograd graph); with ``M_0`` broadcast over the batch (stride 0) and a momentum outside the
  graph, dynamo's guards would fail on the second segment and compile a second graph;
* a last segment shorter than ``segment_len``, or a text fed in pieces (streaming), adds one graph
  per new piece length; evaluation under ``torch.no_grad()`` adds graphs without a backward.

Dynamo keeps at most ``torch._dynamo.config.recompile_limit`` graphs per code object (8 by default),
and every compiled model in a process shares ``MACAttention.forward``'s: a training run with its
evaluation, or a benchmark with two models, needs more than 8 by design, and with ``fullgraph=True``
going past the limit is an error. :func:`compile_regions` raises the limit to :data:`RECOMPILE_LIMIT`.
Token-by-token generation feeds pieces of every length from 1 to ``segment_len``: run it with an
eager model.

``module.compile()`` compiles a module in place, so parameter names, ``state_dict`` keys and
therefore checkpoints are the same with and without compiling; the eager path is untouched and
stays the default. In a notebook, one line::

    model = compile_regions(MACTransformer(config))

On the trainer's command line: ``python -m mac_minimal --compile``. On a CPU, the default backend
(inductor) needs a C++ compiler (gcc or clang), and :func:`compile_regions` asks it to write in C++
also the driver that calls the generated code (:data:`CPU_INDUCTOR_OPTIONS`).
"""

import einops
import torch
from torch import nn

from mac_minimal.baseline import Block
from mac_minimal.mac_attention import MACAttention

__all__ = ["REGIONS", "RECOMPILE_LIMIT", "CPU_INDUCTOR_OPTIONS", "compile_regions", "compiled_regions"]

RECOMPILE_LIMIT = 64
"""Graphs dynamo may keep per code object once :func:`compile_regions` ran (at least this many)."""

CPU_INDUCTOR_OPTIONS = {"cpp_wrapper": True}
"""Inductor's options for a model on the CPU: the code that calls the generated loops and the library's
matrix products one after the other is written in C++ instead of Python (``benchmarks/bench_cpp_wrapper.py``:
16% off the compiled MAC step at chapter 7's setting B, no measurable change at A, and compiling no
slower)."""

REGIONS: tuple[type[nn.Module], ...] = (MACAttention, Block)
"""The module types :func:`compile_regions` compiles: the parts of a model that repeat."""


def _register_einops_types() -> None:
    """Let einops meet plain tensors and parameters once, eagerly, before anything is compiled.

    einops caches a backend per tensor type in a dict the first time it sees the type; if that
    happens while dynamo traces, the dict's size becomes a guard and the next call recompiles.
    """
    einops.rearrange(torch.zeros(1, 1), "a b -> b a")
    einops.rearrange(nn.Parameter(torch.zeros(1, 1)), "a b -> b a")


def compile_regions(model: nn.Module, backend: str = "inductor", **compile_kwargs: object) -> nn.Module:
    """Compile, in place, every module of ``model`` that is one of :data:`REGIONS`; returns ``model``.

    ``backend`` and ``compile_kwargs`` go to :meth:`torch.nn.Module.compile` (``mode="max-autotune"``,
    say); ``fullgraph=True`` and ``dynamic=False`` are fixed; dynamo's recompile limit is raised to
    :data:`RECOMPILE_LIMIT` (see the module's docstring). With inductor, a model whose parameters are
    all on the CPU, and neither ``mode`` nor ``options`` given, is compiled with
    :data:`CPU_INDUCTOR_OPTIONS`. The model's forward, parameters and ``state_dict`` are unchanged:
    only how each region runs changes. Raises TypeError for something that is not a module and
    ValueError for a model without a region to compile.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for fixed in ("fullgraph", "dynamic"):
        if fixed in compile_kwargs:
            raise ValueError(f"compile_regions fixes {fixed}; pass only backend and other torch.compile arguments")
    regions = [module for module in model.modules() if isinstance(module, REGIONS)]
    if not regions:
        names = ", ".join(region.__name__ for region in REGIONS)
        raise ValueError(f"{type(model).__name__} has no region to compile (no {names})")
    _register_einops_types()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if backend == "inductor" and on_cpu and not {"mode", "options"} & compile_kwargs.keys():
        compile_kwargs = {"options": dict(CPU_INDUCTOR_OPTIONS)}   # torch.compile takes mode or options
    for module in regions:
        module.compile(backend=backend, fullgraph=True, dynamic=False, **compile_kwargs)
    return model


def compiled_regions(model: nn.Module) -> int:
    """How many modules of ``model`` :func:`compile_regions` compiled (0 for an eager model)."""
    return sum(getattr(module, "_compiled_call_impl", None) is not None for module in model.modules())
