"""What a training run is: :class:`TrainConfig`, and the models it can train at one budget.

==================  =============================================================
``mac``             :class:`~mac_minimal.model.MACTransformer`, neural memory on
``mac_no_memory``   the same model with ``use_memory=False`` (segment attention only)
``full_attention``  :class:`~mac_minimal.baseline.FullAttentionTransformer`, O(n^2)
``mag``             :class:`~mac_minimal.mag.MAGTransformer`, memory as a gate (Titans 4.2)
``mal``             :class:`~mac_minimal.mal.MALTransformer`, memory as a layer (Titans 4.3)
``swa``             MAG with ``use_memory=False``: sliding-window attention, persistent prefix
==================  =============================================================

``mac`` is built at ``--dim``; the others at the width whose parameter count is closest to
``mac``'s (:func:`model_config`), so a comparison between them is at an equal budget. Every
command-line flag of :mod:`mac_minimal.cli` is one field of :class:`TrainConfig`.
"""

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mac_minimal.baseline import FullAttentionConfig, FullAttentionTransformer
from mac_minimal.carried_state import EPISODE_DISTANCES
from mac_minimal.checks import require_int, require_number, require_positive_int
from mac_minimal.data import RecallTask, mqar_min_length, recall_distance_range
from mac_minimal.layers import num_parameters
from mac_minimal.mag import MAGConfig, MAGTransformer
from mac_minimal.mal import MALConfig, MALTransformer
from mac_minimal.model import MACConfig, MACTransformer
from mac_minimal.neural_memory import NeuralMemoryConfig

__all__ = ["TrainConfig", "TASKS", "MODELS", "REFERENCE_MODEL", "count_parameters", "model_config", "build_model"]

TASKS = ("recall", "mqar", "lm")
_MAC = MACConfig()


@dataclass
class TrainConfig:
    """Everything a run depends on; the command-line flags map one to one onto these fields.

    Flat on purpose: one flag, one field, and a recorded run's config is a flat JSON object. The
    model's fields take their defaults from :class:`~mac_minimal.model.MACConfig`; ``chunk_size``,
    ``memory_max_lr``, ``memory_max_momentum``, ``memory_theta_logit_init``, ``memory_alpha_logit_init``,
    ``memory_write_norm`` and ``memory_conv_size`` are its ``memory.chunk_size``, ``memory.max_lr``,
    ``memory.max_momentum``, ``memory.theta_logit_init``, ``memory.alpha_logit_init``,
    ``memory.write_norm`` and ``memory.conv_size``. For ``mag``,
    ``mal`` and ``swa``, ``segment_len`` is the sliding window (each token attends to itself and the
    ``segment_len - 1`` before it, as many recent tokens as MAC's segment holds), the memory fields are
    theirs, and ``memory_scale_init`` and ``memory_input`` are unused.
    """

    model: str = "mac"
    task: str = "recall"
    data: str | None = None
    max_bytes: int = 4_000_000
    num_facts: int = 4
    min_facts: int = 1                               # mqar: the fewest pairs a training batch draws
    mqar_show_answers: bool = True                   # mqar: the stream shows each question's answer after it
    num_values: int = 32
    num_keys: int = 32
    eval_distances: list[int] | None = None
    dim: int = _MAC.dim                              # the model's fields default to MACConfig's
    depth: int = _MAC.depth
    heads: int = _MAC.heads
    segment_len: int = _MAC.segment_len
    num_persistent: int = _MAC.num_persistent
    chunk_size: int = _MAC.memory.chunk_size        # the memory's chunk (eq. 16)
    memory_max_lr: float = _MAC.memory.max_lr
    memory_max_momentum: float = _MAC.memory.max_momentum
    memory_theta_logit_init: float = _MAC.memory.theta_logit_init
    memory_alpha_logit_init: float = _MAC.memory.alpha_logit_init
    memory_write_norm: bool = _MAC.memory.write_norm
    memory_conv_size: int = _MAC.memory.conv_size
    memory_scale_init: float | None = _MAC.memory_scale_init
    memory_input: str = _MAC.memory_input
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 200
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 4
    log_every: int = 10
    time_limit: float | None = None                  # seconds of wall time, then stop as at the last step
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    resume: bool = False
    progress: bool = True
    compile: bool = False                            # torch.compile every repeating region (compiled.py)
    recompute_memory: bool = False                   # the memory's writes run again in backward (neural_memory.py)
    carry_state: float | None = None                 # restart probability per row and step (carried_state.py)
    episode_windows: int | None = None               # recall episodes across windows (carried_state.py)
    episode_distances: str = "uniform"               # or "log": each scale of distance asked equally often

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.compile and self.model not in COMPILED_MODELS:
            raise ValueError(f"--compile compiles the regions of {', '.join(COMPILED_MODELS)} "
                             f"(mac_minimal.compiled.REGIONS); --model {self.model} runs eagerly, without --compile")
        if self.recompute_memory and self.model not in MEMORY_MODELS:
            raise ValueError(f"--recompute-memory recomputes the neural memory of {', '.join(MEMORY_MODELS)}; "
                             f"--model {self.model} has none")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.carry_state is not None:
            self._check_carry_state()
        if self.episode_windows is not None:
            require_positive_int("episode_windows", self.episode_windows)
            if self.carry_state is None or self.task != "recall" or self.num_facts != 1:
                raise ValueError("episode_windows must come with --carry-state, --task recall and --num-facts 1 "
                                 "(one fact asked across carried windows), got "
                                 f"carry_state={self.carry_state}, task={self.task}, num_facts={self.num_facts}")
        if self.episode_distances not in EPISODE_DISTANCES:
            raise ValueError(f"episode_distances must be one of {EPISODE_DISTANCES}, got {self.episode_distances!r}")
        if self.episode_distances != "uniform" and self.episode_windows is None:
            raise ValueError("episode_distances draws the distances of --episode-windows; give --episode-windows E")
        if self.data is not None and self.task != "lm":
            raise ValueError("--data is a text file for --task lm; the recall task is generated")
        if self.data is not None and not (os.path.isfile(self.data) and os.access(self.data, os.R_OK)):
            found = ("a directory" if os.path.isdir(self.data) else
                     "not readable" if os.path.exists(self.data) else "no such file")
            raise ValueError(f"--data must be a readable text file, got {self.data!r} ({found})")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches", "log_every", "max_bytes",
                     "num_facts", "num_values", "num_keys"):
            require_positive_int(name, getattr(self, name))
        require_number("lr", self.lr, low=0.0)
        require_number("memory_max_lr", self.memory_max_lr, low=0.0)   # NeuralMemoryConfig.max_lr, by its flag's name
        require_number("memory_max_momentum", self.memory_max_momentum, low=0.0, high=1.0, closed=True)
        for name in ("memory_theta_logit_init", "memory_alpha_logit_init"):
            require_number(name, getattr(self, name))
        require_number("grad_clip", self.grad_clip, low=0.0)
        if self.time_limit is not None:
            require_number("time_limit", self.time_limit, low=0.0, closed=True)
        require_number("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0, closed=True)
        require_number("weight_decay", self.weight_decay, low=0.0, closed=True)
        require_int("warmup_steps", self.warmup_steps, minimum=0)
        require_int("memory_conv_size", self.memory_conv_size, minimum=0)
        _mac(self, vocab_size=1, dim=self.dim, use_memory=True)   # dim, heads, ..., memory_scale_init
        if self.task == "mqar" and self.seq_len < mqar_min_length(self.num_facts):
            raise ValueError(f"seq_len must be >= {mqar_min_length(self.num_facts)} for --task mqar with "
                             f"num_facts={self.num_facts} (the pairs, then two tokens per query), got {self.seq_len}")
        require_int("min_facts", self.min_facts, minimum=1)
        if self.min_facts != 1 and (self.task != "mqar" or self.min_facts > self.num_facts):
            raise ValueError(f"min_facts must be 1, or with --task mqar at most --num-facts={self.num_facts}, "
                             f"got {self.min_facts} (task {self.task})")
        if not self.mqar_show_answers and self.task != "mqar":
            raise ValueError(f"mqar_show_answers=False needs --task mqar, got task {self.task}")
        if self.task in ("recall", "mqar") and self.num_facts > self.num_keys:
            raise ValueError(f"--num-facts must be <= --num-keys={self.num_keys} (each fact needs a key of its "
                             f"own), got {self.num_facts}")
        if self.eval_distances is not None and self.task != "recall":
            raise ValueError(f"eval_distances must be left out for --task {self.task} (they are distances of "
                             f"--task recall), got {self.eval_distances}")
        if self.task == "recall":
            low, high = recall_distance_range(self.seq_len, self.num_facts)
            if any(not low <= d <= high for d in self.eval_distances or []):
                raise ValueError(f"eval_distances must lie in [{low}, {high}] for seq_len={self.seq_len}, "
                                 f"num_facts={self.num_facts}, got {self.eval_distances}")
        if self.out is None:
            self.out = os.path.join("runs", f"{self.model}-{self.task}")
        out = Path(self.out).absolute()
        existing = next(path for path in (out, *out.parents) if path.exists())   # out or the nearest folder above it
        if not existing.is_dir():
            raise ValueError(f"--out must be a directory (new or existing), got {self.out!r} ({existing} is a file)")

    def _check_carry_state(self) -> None:
        """``carry_state``: a probability in (0, 1], for ``mac``, with windows ending on segment and chunk edges."""
        require_number("carry_state", self.carry_state, low=0.0, high=1.0)
        if self.model != "mac":
            raise ValueError(f"--carry-state carries MAC's memory from batch to batch (mac_minimal.carried_state); "
                             f"use it with --model mac, got --model {self.model}")
        if self.seq_len % self.segment_len or self.seq_len % self.chunk_size:
            raise ValueError(f"--carry-state needs seq_len to be a multiple of segment_len and chunk_size (windows "
                             f"end on segment and chunk edges), got seq_len={self.seq_len}, "
                             f"segment_len={self.segment_len}, chunk_size={self.chunk_size}")

    @property
    def recall_task(self) -> RecallTask:
        """The recall vocabulary: ``num_keys`` keys, ``num_values`` values, the default filler range."""
        return RecallTask(num_keys=self.num_keys, num_values=self.num_values)

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.out) / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return Path(self.out) / "metrics.jsonl"


# ---------------------------------------------------------------------------------------------
# Models: a name -> (config builder, class) registry, sizes matched to the MAC model's.

def _memory(cfg: TrainConfig) -> NeuralMemoryConfig:
    """The memory of every model that has one: ``--chunk-size`` and the ``--memory-*`` flags."""
    return NeuralMemoryConfig(chunk_size=cfg.chunk_size, max_lr=cfg.memory_max_lr,
                              max_momentum=cfg.memory_max_momentum, theta_logit_init=cfg.memory_theta_logit_init,
                              alpha_logit_init=cfg.memory_alpha_logit_init, write_norm=cfg.memory_write_norm,
                              conv_size=cfg.memory_conv_size)


def _mac(cfg: TrainConfig, vocab_size: int, dim: int, use_memory: bool) -> MACConfig:
    return MACConfig(vocab_size=vocab_size, dim=dim, depth=cfg.depth, heads=cfg.heads,
                     segment_len=cfg.segment_len, num_persistent=cfg.num_persistent,
                     use_memory=use_memory, memory_scale_init=cfg.memory_scale_init,
                     memory_input=cfg.memory_input, memory=_memory(cfg))


def _mag(cfg: TrainConfig, vocab_size: int, dim: int, use_memory: bool) -> MAGConfig:
    return MAGConfig(vocab_size=vocab_size, dim=dim, depth=cfg.depth, heads=cfg.heads, window=cfg.segment_len,
                     num_persistent=cfg.num_persistent, use_memory=use_memory, memory=_memory(cfg))


def _mal(cfg: TrainConfig, vocab_size: int, dim: int) -> MALConfig:
    return MALConfig(vocab_size=vocab_size, dim=dim, depth=cfg.depth, heads=cfg.heads, window=cfg.segment_len,
                     num_persistent=cfg.num_persistent, memory=_memory(cfg))


def _full_attention(cfg: TrainConfig, vocab_size: int, dim: int) -> FullAttentionConfig:
    return FullAttentionConfig(vocab_size=vocab_size, dim=dim, depth=cfg.depth, heads=cfg.heads)


MODELS: dict[str, tuple[Callable[[TrainConfig, int, int], Any], type[nn.Module]]] = {
    "mac": (partial(_mac, use_memory=True), MACTransformer),
    "mac_no_memory": (partial(_mac, use_memory=False), MACTransformer),
    "full_attention": (_full_attention, FullAttentionTransformer),
    "mag": (partial(_mag, use_memory=True), MAGTransformer),
    "mal": (_mal, MALTransformer),
    "swa": (partial(_mag, use_memory=False), MAGTransformer),
}
REFERENCE_MODEL = "mac"
COMPILED_MODELS = ("mac", "mac_no_memory", "full_attention")   # the models with a region of compiled.REGIONS
MEMORY_MODELS = ("mac", "mag", "mal")                           # the models with a NeuralMemory


def count_parameters(name: str, cfg: TrainConfig, vocab_size: int, dim: int) -> int:
    """Parameters of model ``name`` at width ``dim``, counted on the meta device (no memory used)."""
    builder, cls = MODELS[name]
    with torch.device("meta"):
        return num_parameters(cls(builder(cfg, vocab_size, dim)))


def model_config(cfg: TrainConfig, vocab_size: int) -> Any:
    """The config of ``cfg.model``: ``mac`` at width ``cfg.dim``, the others at the width (a multiple
    of ``2 * heads``, for rotary) whose parameter count is closest to that ``mac``'s, so the
    comparison is at an equal budget. Depth, heads and segment settings are shared."""
    builder, _ = MODELS[cfg.model]
    if cfg.model == REFERENCE_MODEL:
        return builder(cfg, vocab_size, cfg.dim)
    target = count_parameters(REFERENCE_MODEL, cfg, vocab_size, cfg.dim)
    step = 2 * cfg.heads
    counts = {step: count_parameters(cfg.model, cfg, vocab_size, step)}
    while max(counts.values()) < target:  # the count grows with dim: widen until past the target
        dim = max(counts) + step
        counts[dim] = count_parameters(cfg.model, cfg, vocab_size, dim)
    return builder(cfg, vocab_size, min(counts, key=lambda d: abs(counts[d] - target)))


def build_model(cfg: TrainConfig, vocab_size: int) -> tuple[nn.Module, Any]:
    """The model ``cfg.model`` (float32, on the CPU, initialised from the current torch seed) and its config."""
    config = model_config(cfg, vocab_size)
    return MODELS[cfg.model][1](config), config
