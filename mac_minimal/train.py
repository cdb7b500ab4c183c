"""The command-line trainer of chapter 8: ``python -m mac_minimal.train --help``.

Trains one of three models of (about) the same parameter count on one of two tasks, on a laptop
CPU or a GPU, and under ``torchrun`` on several GPUs:

==================  =============================================================
``mac``             :class:`~mac_minimal.model.MACTransformer`, neural memory on
``mac_no_memory``   the same model with ``use_memory=False`` (segment attention only)
``full_attention``  :class:`~mac_minimal.baseline.FullAttentionTransformer`, O(n^2)
==================  =============================================================

Tasks (:mod:`mac_minimal.data`): ``recall`` (key-value facts far back in filler, accuracy on
the answers, swept over distance) and ``lm`` (bytes of the Python standard library or of any
file, validation bits per byte).

Every training choice, briefly:

* **AdamW** (Loshchilov & Hutter 2019): Adam's per-parameter step sizes with weight decay applied
  to the weights directly rather than through the gradient; decay only on matrices (``dim >= 2``),
  since shrinking norms' gains and biases towards 0 only hurts.
* **Linear warmup**: Adam's second-moment estimates are noisy over the first steps, and a full-size
  step on them can throw a fresh transformer into a bad region; ramping the rate up avoids that.
* **Cosine decay** to ``min_lr_ratio * lr``: large steps early for progress, small ones late to
  settle into a minimum; the cosine does this smoothly with one knob (the run's length).
* **Gradient clipping** (global norm): one unlucky batch (or the memory's inner loop amplifying a
  gradient) cannot make one huge update; clipping bounds the step without changing its direction.
* **bf16 autocast on CUDA only**: bfloat16 matrix products run several times faster on tensor cores
  and keep float32's exponent range, so no loss scaling is needed; weights, optimizer state and
  the loss stay float32, and so does the neural memory, whose test-time gradient steps bf16 would round
  away (:func:`~mac_minimal.neural_memory.full_precision`). A CPU gains nothing reliable from autocast, so
  CPU runs stay in float32 and are bit-for-bit reproducible.
* **Fixed seeds and saved RNG states**: the model is initialised from ``--seed``; the data comes from
  its own generator (one per rank) whose state is checkpointed, so an interrupted run resumed with
  ``--resume`` computes, on a CPU, exactly the losses of the uninterrupted one.
* **Atomic checkpoints**: written to a temporary file in the same directory, then ``os.replace``d,
  so a crash mid-write never leaves a truncated checkpoint behind.
* **A non-finite loss stops the run** (:class:`NonFiniteLossError`, exit status 3) before the
  optimizer applies the bad step; the last checkpoint on disk is the last good state.
* **Distributed data parallel**: under ``torchrun --nproc_per_node=N`` each process trains on its
  own data stream, gradients are averaged across processes, and only rank 0 writes.

Outputs in ``--out`` (default ``runs/MODEL-TASK``): ``checkpoint.pt`` and ``metrics.jsonl``, one
JSON object per line (``event`` = start / train / eval / nonfinite / end), read by :func:`read_metrics`;
the ``end`` record holds the run's training throughput (tokens/s, evaluation excluded) and peak memory.
"""

import argparse
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, NoReturn

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mac_minimal.baseline import FullAttentionConfig, FullAttentionTransformer
from mac_minimal.data import (Batch, RecallTask, lm_batch, lm_eval_batches, read_corpus, recall_batch,
                              recall_distance_range, split_corpus)
from mac_minimal.model import MACConfig, MACTransformer

__all__ = ["TrainConfig", "MODELS", "NonFiniteLossError", "CheckpointError", "parse_args", "model_config",
           "build_model", "count_parameters", "setup_runtime", "autocast", "prepare_data", "make_batch",
           "lr_factor", "peak_memory_bytes", "compute_loss", "train_step", "evaluate_recall", "evaluate_lm",
           "evaluate", "save_checkpoint", "load_checkpoint", "read_metrics", "train", "main"]

EVAL_SEED = 2**31 - 1  # the recall evaluation batches: the same for every model, seed and run
TASKS = ("recall", "lm")
EXIT_BAD_ARGUMENTS = 2      # argparse's own status for a bad command line
EXIT_BAD_CHECKPOINT = 2
EXIT_NONFINITE = 3


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the step was not applied."""


class CheckpointError(ValueError):
    """A checkpoint is missing, would be overwritten, or does not fit the requested model."""


@dataclass
class TrainConfig:
    """Everything a run depends on; the command-line flags map one to one onto these fields."""

    model: str = "mac"
    task: str = "recall"
    data: str | None = None
    max_bytes: int = 4_000_000
    num_facts: int = 4
    num_values: int = 32
    num_keys: int = 32
    eval_distances: list[int] | None = None
    dim: int = 32
    depth: int = 2
    heads: int = 4
    segment_len: int = 16
    num_persistent: int = 4
    chunk_size: int = 8
    memory_max_lr: float = 0.03
    memory_scale_init: float | None = 0.0
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
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.data is not None and self.task != "lm":
            raise ValueError("--data is a text file for --task lm; the recall task is generated")
        if self.data is not None and not os.path.isfile(self.data):
            raise ValueError(f"--data must be a readable text file, got {self.data!r} (no such file)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches", "log_every", "num_values",
                     "num_keys"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        _require_range("lr", self.lr, low=0.0)
        _require_range("memory_max_lr", self.memory_max_lr, low=0.0)
        _require_range("grad_clip", self.grad_clip, low=0.0)
        _require_range("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0, closed=True)
        _require_range("weight_decay", self.weight_decay, low=0.0, closed=True)
        if self.memory_scale_init is not None:
            _require_range("memory_scale_init", self.memory_scale_init)
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _mac(self, vocab_size=1, dim=self.dim, use_memory=True)   # dim, heads, segment_len, chunk_size, ...
        if self.task == "recall":
            if self.num_facts > self.num_keys:
                raise ValueError(f"num_facts={self.num_facts} needs as many distinct keys, got num_keys={self.num_keys}")
            low, high = recall_distance_range(self.seq_len, self.num_facts)
            if any(not low <= d <= high for d in self.eval_distances or []):
                raise ValueError(f"eval_distances must lie in [{low}, {high}] for seq_len={self.seq_len}, "
                                 f"num_facts={self.num_facts}, got {self.eval_distances}")
        if self.out is None:
            self.out = os.path.join("runs", f"{self.model}-{self.task}")

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


def _require_range(name: str, value: float, low: float | None = None, high: float | None = None,
                   closed: bool = False) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is finite and above ``low`` (at least ``low``
    if ``closed``) and at most ``high``."""
    too_low = low is not None and (value < low if closed else value <= low)
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        bound = "any finite number" if low is None else (
            f"{'>=' if closed else '>'} {low:g}" + ("" if high is None else f" and <= {high:g}"))
        raise ValueError(f"{name} must be {bound}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Models: a name -> (config builder, class) registry, sizes matched to the MAC model's.

def _mac(cfg: TrainConfig, vocab_size: int, dim: int, use_memory: bool) -> MACConfig:
    return MACConfig(vocab_size=vocab_size, dim=dim, depth=cfg.depth, heads=cfg.heads,
                     segment_len=cfg.segment_len, num_persistent=cfg.num_persistent,
                     chunk_size=cfg.chunk_size, use_memory=use_memory,
                     memory_max_lr=cfg.memory_max_lr, memory_scale_init=cfg.memory_scale_init)


def _full_attention(cfg: TrainConfig, vocab_size: int, dim: int) -> FullAttentionConfig:
    return FullAttentionConfig(vocab_size=vocab_size, dim=dim, depth=cfg.depth, heads=cfg.heads)


MODELS: dict[str, tuple[Callable[[TrainConfig, int, int], Any], type[nn.Module]]] = {
    "mac": (partial(_mac, use_memory=True), MACTransformer),
    "mac_no_memory": (partial(_mac, use_memory=False), MACTransformer),
    "full_attention": (_full_attention, FullAttentionTransformer),
}
REFERENCE_MODEL = "mac"


def count_parameters(name: str, cfg: TrainConfig, vocab_size: int, dim: int) -> int:
    """Parameters of model ``name`` at width ``dim``, counted on the meta device (no memory used)."""
    builder, cls = MODELS[name]
    with torch.device("meta"):
        return sum(p.numel() for p in cls(builder(cfg, vocab_size, dim)).parameters())


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


# ---------------------------------------------------------------------------------------------
# Command line.

def int_list(text: str) -> list[int]:
    """``"8,20,40"`` -> ``[8, 20, 40]`` (an argparse type)."""
    return [int(item) for item in text.split(",")]


def float_or_none(text: str) -> float | None:
    """``"none"`` -> None, else a float (an argparse type)."""
    return None if text.lower() == "none" else float(text)


EXAMPLES = """examples:
  python -m mac_minimal.train --model mac --task recall             # CPU or GPU, whichever there is
  python -m mac_minimal.train --model full_attention --task lm --data notes.txt
  python -m mac_minimal.train --model mac --task recall --resume    # continue runs/mac-recall
  torchrun --nproc_per_node=4 -m mac_minimal.train --model mac --task lm --device cuda

outputs: DIR/checkpoint.pt, DIR/metrics.jsonl (one JSON record per line).
exit status: 0 done, 2 bad arguments or checkpoint, 3 non-finite loss."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` except where there is nothing to show (None, or an on/off flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_ARGUMENTS, f"{self.prog}: error: {message} (see --help)\n")


def _as_flag(message: str) -> str:
    """Name the command-line flag in a config error: ``"lr must be > 0"`` -> ``"--lr must be > 0"``,
    ``"MACAttentionConfig.segment_len must ..."`` -> ``"--segment-len must ..."``."""
    match = re.match(r"(?:\w+Config\.)?(\w+)(\s+must\b.*)", message, re.S)
    if match and match[1] in {f.name for f in fields(TrainConfig)}:
        return "--" + match[1].replace("_", "-") + match[2]
    return message


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line into a :class:`TrainConfig`; a bad argument exits with one line, status 2."""
    d = TrainConfig()
    p = _Parser(
        prog="python -m mac_minimal.train",
        description="Train MAC, MAC without memory, or a full-attention transformer on long-range "
                    "recall or byte-level language modelling. CPU or GPU; under torchrun, multi-GPU (DDP).",
        epilog=EXAMPLES, formatter_class=_HelpFormatter)
    g = p.add_argument_group("model (the non-mac models get the width that matches mac's parameter count)")
    g.add_argument("--model", choices=list(MODELS), default=d.model)
    g.add_argument("--dim", type=int, default=d.dim, help="model width of mac")
    g.add_argument("--depth", type=int, default=d.depth, help="number of blocks")
    g.add_argument("--heads", type=int, default=d.heads, help="attention heads")
    g.add_argument("--segment-len", type=int, default=d.segment_len, help="MAC attention segment")
    g.add_argument("--num-persistent", type=int, default=d.num_persistent, help="MAC persistent slots")
    g.add_argument("--chunk-size", type=int, default=d.chunk_size, help="MAC memory chunk")
    g.add_argument("--memory-max-lr", type=float, default=d.memory_max_lr,
                   help="MAC memory: cap of the step size theta_t")
    g.add_argument("--memory-scale-init", type=float_or_none, default=d.memory_scale_init,
                   help="MAC: a learned scalar on the memory term of eq. 25, initialised to this; "
                        "none: no scale, o = y + M(y)")
    g = p.add_argument_group("task")
    g.add_argument("--task", choices=TASKS, default=d.task)
    g.add_argument("--data", default=d.data, metavar="PATH",
                   help="lm: a text file (default: the Python standard library's sources)")
    g.add_argument("--max-bytes", type=int, default=d.max_bytes, help="lm: bytes of text to read")
    g.add_argument("--num-facts", type=int, default=d.num_facts, help="recall: facts per sequence")
    g.add_argument("--num-values", type=int, default=d.num_values,
                   help="recall: distinct values (chance accuracy = 1 / num_values)")
    g.add_argument("--num-keys", type=int, default=d.num_keys, help="recall: distinct keys (>= num_facts)")
    g.add_argument("--eval-distances", type=int_list, default=d.eval_distances,
                   metavar="D1,D2,...", help="recall: distances to evaluate (default: 5 across the range)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per training sequence")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per step per process")
    g.add_argument("--steps", type=int, default=d.steps, help="optimizer steps in total")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="final lr / peak lr")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="steps of linear lr warmup")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay (matrices only)")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max global gradient norm")
    g.add_argument("--seed", type=int, default=d.seed, help="weights and data stream")
    g = p.add_argument_group("run")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="auto: cuda if available")
    g.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/MODEL-TASK)")
    g.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.pt (the model flags must match it; the others are "
                        "taken from this command line, so --steps can extend a run)")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate and checkpoint every N steps")
    g.add_argument("--eval-batches", type=int, default=d.eval_batches, help="batches per evaluation")
    g.add_argument("--log-every", type=int, default=d.log_every, help="write train metrics every N steps")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    try:
        return TrainConfig(**vars(p.parse_args(argv)))
    except ValueError as error:
        p.error(_as_flag(str(error)))


# ---------------------------------------------------------------------------------------------
# Devices and processes.

@dataclass
class Runtime:
    """Where this process runs: its rank among ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(requested: str) -> Runtime:
    """Pick the device (``auto`` = cuda if available) and, when ``torchrun`` started several
    processes (``WORLD_SIZE > 1``), join the process group: nccl between GPUs, gloo on CPUs."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Runtime(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(dist.get_rank(), world_size, device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"


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


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA, a no-op on the CPU (see the module docstring)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ---------------------------------------------------------------------------------------------
# Data.

@dataclass
class TaskData:
    """What a task needs to make batches: its vocabulary, and for ``lm`` the split bytes and their hash."""

    vocab_size: int
    train_tokens: Tensor | None = None
    val_tokens: Tensor | None = None
    sha256: str | None = None


def prepare_data(cfg: TrainConfig) -> TaskData:
    """The task's vocabulary; for ``lm`` also the text (read once), its split and its SHA-256."""
    if cfg.task == "recall":
        return TaskData(cfg.recall_task.vocab_size)
    text, digest = read_corpus(cfg.data, cfg.max_bytes)
    train_tokens, val_tokens = split_corpus(text)
    return TaskData(256, train_tokens, val_tokens, digest)


def data_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s data stream: distinct for every (seed, rank < 65535), and never the
    model-initialisation seed, so data and weights are not drawn from the same random numbers."""
    return seed * 2**16 + rank + 1


def make_batch(cfg: TrainConfig, data: TaskData, generator: torch.Generator) -> Batch:
    """One training batch. Recall: a distance drawn uniformly from the whole range the sequence
    length allows, so the model meets every distance it is evaluated on. LM: random windows."""
    if cfg.task == "recall":
        low, high = recall_distance_range(cfg.seq_len, cfg.num_facts)
        distance = int(torch.randint(low, high + 1, (1,), generator=generator))
        return recall_batch(cfg.batch_size, cfg.seq_len, distance, cfg.num_facts, generator, cfg.recall_task)
    return lm_batch(data.train_tokens, cfg.batch_size, cfg.seq_len, generator)


def default_eval_distances(seq_len: int, num_facts: int, count: int = 5) -> list[int]:
    low, high = recall_distance_range(seq_len, num_facts)
    return sorted({round(low + (high - low) * i / (count - 1)) for i in range(count)})


# ---------------------------------------------------------------------------------------------
# Loss, step, evaluation.

def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warmup from ``1 / warmup_steps``
    to 1, then a half cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def masked_losses(model: nn.Module, batch: Batch, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-target cross-entropy (nats) and argmax-correctness, both (b, n) float32."""
    with autocast(device):
        logits, _ = model(batch.inputs)                                # (b, n, V)
    logits = logits.float()
    losses = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none")
    correct = (logits.argmax(-1) == batch.targets).float()
    return losses.view_as(correct), correct


def compute_loss(model: nn.Module, batch: Batch, device: torch.device) -> Tensor:
    """Mean cross-entropy over the targets in ``batch.mask`` (the answers for recall, all bytes for lm)."""
    losses, _ = masked_losses(model, batch, device)
    mask = batch.mask.float()
    return (losses * mask).sum() / mask.sum()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
               batch: Batch, cfg: TrainConfig, runtime: Runtime, step: int) -> tuple[float, float]:
    """One optimizer step; returns (loss, gradient norm before clipping), averaged over processes.

    Raises :class:`NonFiniteLossError` before the update if either is NaN or infinite (every
    process sees the same averaged values, so all of them stop together).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = compute_loss(model, batch, runtime.device)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    stats = torch.stack([loss.detach().float(), grad_norm.float()])
    if runtime.world_size > 1:
        dist.all_reduce(stats)                        # a sum (gloo has no average)
        stats /= runtime.world_size
    loss_value, norm_value = stats.tolist()
    if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
        raise NonFiniteLossError(f"non-finite loss {loss_value} (gradient norm {norm_value}) at step {step + 1}")
    optimizer.step()
    scheduler.step()
    return loss_value, norm_value


@torch.no_grad()
def evaluate_recall(model: nn.Module, distances: list[int], seq_len: int, num_facts: int, batch_size: int,
                    num_batches: int, device: torch.device | str = "cpu", seed: int = EVAL_SEED,
                    task: RecallTask = RecallTask()) -> dict[str, Any]:
    """Recall accuracy against distance: for each distance, ``num_batches`` fixed batches (from
    ``seed``), the fraction of answer tokens whose argmax is right. Returns
    ``{"accuracy": {distance: acc}, "loss": mean answer loss, "mean_accuracy": mean over distances}``."""
    device = torch.device(device)
    accuracy, losses = {}, []
    was_training, _ = model.training, model.eval()
    for distance in distances:
        generator = torch.Generator().manual_seed(seed + distance)
        hits, count = 0.0, 0.0
        for _ in range(num_batches):
            batch = recall_batch(batch_size, seq_len, distance, num_facts, generator, task).to(device)
            loss, correct = masked_losses(model, batch, device)
            hits += float(correct[batch.mask].sum())
            count += float(batch.mask.sum())
            losses.append(float(loss[batch.mask].mean()))
        accuracy[distance] = hits / count
    model.train(was_training)
    return {"accuracy": accuracy, "loss": sum(losses) / len(losses),
            "mean_accuracy": sum(accuracy.values()) / len(accuracy)}


@torch.no_grad()
def evaluate_lm(model: nn.Module, batches: list[Batch], device: torch.device | str = "cpu") -> dict[str, float]:
    """Validation loss over ``batches``: ``{"loss": nats per byte, "bpb": bits per byte = loss / ln 2}``."""
    device = torch.device(device)
    was_training, _ = model.training, model.eval()
    total, count = 0.0, 0
    for batch in batches:
        losses, _ = masked_losses(model, batch.to(device), device)
        total += float(losses.sum())
        count += losses.numel()
    model.train(was_training)
    return {"loss": total / count, "bpb": total / count / math.log(2)}


def evaluate(model: nn.Module, cfg: TrainConfig, data: TaskData, device: torch.device) -> dict[str, Any]:
    if cfg.task == "recall":
        distances = cfg.eval_distances or default_eval_distances(cfg.seq_len, cfg.num_facts)
        return evaluate_recall(model, distances, cfg.seq_len, cfg.num_facts, cfg.batch_size,
                               cfg.eval_batches, device, task=cfg.recall_task)
    return evaluate_lm(model, lm_eval_batches(data.val_tokens, cfg.batch_size, cfg.seq_len, cfg.eval_batches), device)


# ---------------------------------------------------------------------------------------------
# Checkpoints: plain dicts and tensors only, so torch.load(weights_only=True) can read them.

def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Tensor | None]:
    """This process's random state: torch's CPU generator, its CUDA generator, the data generator."""
    return {"torch": torch.get_rng_state(), "data": generator.get_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def gather_rng_states(local: dict[str, Tensor | None], runtime: Runtime) -> list[dict[str, Tensor | None]]:
    """Every rank's :func:`rng_state`, in rank order (a collective: all ranks must call it)."""
    if runtime.world_size == 1:
        return [local]
    states: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(states, local)
    return states


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same directory, then
    ``os.replace`` (atomic on POSIX and Windows), so ``path`` is always a complete checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


CHECKPOINT_KEYS = frozenset({"step", "model_name", "model_config", "train_config", "model", "optimizer",
                             "scheduler", "rng"})


def load_checkpoint(path: Path, model_name: str, config: Any) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check it holds ``model_name`` with ``config``.

    Raises :class:`CheckpointError` naming every field that differs.
    """
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # truncated file, not a torch file, or one with objects we will not unpickle
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}); "
                              "nothing was overwritten") from None
    missing = CHECKPOINT_KEYS - set(payload) if isinstance(payload, dict) else CHECKPOINT_KEYS
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer (missing {sorted(missing)}); "
                              "nothing was overwritten")
    requested = asdict(config)
    if payload["model_name"] != model_name:
        raise CheckpointError(f"checkpoint {path} holds model {payload['model_name']!r}, "
                              f"requested {model_name!r}")
    saved = payload["model_config"]
    differing = [f"{k}: checkpoint {saved.get(k)!r}, requested {requested.get(k)!r}"
                 for k in sorted(set(saved) | set(requested)) if saved.get(k) != requested.get(k)]
    if differing:
        raise CheckpointError(f"checkpoint {path} was trained with another model config; "
                              "differing fields: " + "; ".join(differing))
    return payload


def restore(payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator, runtime: Runtime) -> int:
    """Load weights, optimizer, schedule and this rank's random states; returns the step reached."""
    if len(payload["rng"]) != runtime.world_size:
        raise CheckpointError(f"checkpoint was written by {len(payload['rng'])} process(es), this run has "
                              f"{runtime.world_size}: each process's data stream could not be continued")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    rng = payload["rng"][runtime.rank]
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["data"])
    if runtime.device.type == "cuda" and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"], runtime.device)
    return payload["step"]


# ---------------------------------------------------------------------------------------------
# Metrics: JSON lines, one record per event.

def write_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike, event: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, optionally only those of one ``event`` kind."""
    with open(path) as file:
        records = [json.loads(line) for line in file if line.strip()]
    return [r for r in records if event is None or r["event"] == event]


def start_metrics(cfg: TrainConfig, step: int, record: dict[str, Any]) -> None:
    """Begin the metrics file: afresh, or on resume keep only the records up to the checkpoint's
    step (a crashed run may have logged steps that the resumed run will redo)."""
    path = cfg.metrics_path
    kept = [r for r in read_metrics(path) if r["step"] <= step] if cfg.resume and path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    write_metrics(path, record)


# ---------------------------------------------------------------------------------------------
# The run.

def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device
                   ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (decay on matrices only) and the warmup + cosine schedule as a LambdaLR."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    schedule = partial(lr_factor, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_ratio=cfg.min_lr_ratio)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def parameter_spread(model: nn.Module, runtime: Runtime) -> float:
    """Largest |difference| between any rank's parameters and rank 0's (0.0 when DDP kept them equal)."""
    flat = nn.utils.parameters_to_vector(model.parameters()).detach()
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    spread = (flat - reference).abs().max()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the last evaluation and step.

    Raises :class:`CheckpointError` for a checkpoint that is missing (``--resume``), would be
    overwritten (no ``--resume``), or does not match; :class:`NonFiniteLossError` on a NaN/inf.
    """
    runtime = setup_runtime(cfg.device)
    try:
        return _train(cfg, runtime)
    finally:
        if runtime.world_size > 1:
            dist.destroy_process_group()


@dataclass
class Run:
    """Everything a run holds while it trains (``trained`` is ``model`` itself or its DDP wrapper)."""

    cfg: TrainConfig
    runtime: Runtime
    data: TaskData
    config: Any
    model: nn.Module
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator


def start_run(cfg: TrainConfig, runtime: Runtime) -> tuple[Run, int]:
    """Build data, model and optimizer from the seeds, restore the checkpoint on ``--resume``,
    print the parameter counts and begin the metrics file; returns the run and its first step."""
    if not cfg.resume and cfg.checkpoint_path.exists():
        raise CheckpointError(f"{cfg.checkpoint_path} exists: pass --resume to continue it, or another --out")
    data = prepare_data(cfg)
    torch.manual_seed(cfg.seed)                      # the same initial weights on every rank
    model, config = build_model(cfg, data.vocab_size)
    model.to(runtime.device)
    optimizer, scheduler = make_optimizer(model, cfg, runtime.device)
    generator = torch.Generator().manual_seed(data_seed(cfg.seed, runtime.rank))
    step = 0
    if cfg.resume:
        step = restore(load_checkpoint(cfg.checkpoint_path, cfg.model, config),
                       model, optimizer, scheduler, generator, runtime)
    trained = model if runtime.world_size == 1 else DistributedDataParallel(
        model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    if runtime.is_main:
        parameters = sum(p.numel() for p in model.parameters())
        reference = count_parameters(REFERENCE_MODEL, cfg, data.vocab_size, cfg.dim)
        print(f"{cfg.model}: {parameters:,} parameters (dim {config.dim}; "
              f"{REFERENCE_MODEL} reference {reference:,}) on {device_name(runtime.device)}"
              + (f" x {runtime.world_size} processes" if runtime.world_size > 1 else ""), flush=True)
        start_metrics(cfg, step, {
            "event": "start", "step": step, "resumed": cfg.resume, "model": cfg.model, "task": cfg.task,
            "parameters": parameters, "reference_parameters": reference, "model_config": asdict(config),
            "train_config": asdict(cfg), "device": device_name(runtime.device), "world_size": runtime.world_size,
            "torch": torch.__version__, "python": platform.python_version(), "data_sha256": data.sha256,
            "data_bytes": None if data.train_tokens is None else len(data.train_tokens) + len(data.val_tokens)})
    return Run(cfg, runtime, data, config, model, trained, optimizer, scheduler, generator), step


def evaluate_and_save(run: Run, step: int) -> dict[str, Any]:
    """Evaluate and checkpoint on rank 0 (every rank must call it: the random states are gathered);
    returns the evaluation (empty on other ranks)."""
    rng = gather_rng_states(rng_state(run.generator, run.runtime.device), run.runtime)
    if not run.runtime.is_main:
        return {}
    cfg = run.cfg
    result = evaluate(run.model, cfg, run.data, run.runtime.device)
    write_metrics(cfg.metrics_path, {"event": "eval", "step": step, **result})
    save_checkpoint(cfg.checkpoint_path, {
        "step": step, "model_name": cfg.model, "model_config": asdict(run.config), "train_config": asdict(cfg),
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "rng": rng})
    summary = result.get("bpb", result.get("mean_accuracy"))
    tqdm.write(f"step {step}: {'val bpb' if cfg.task == 'lm' else 'recall accuracy'} {summary:.4f}")
    return result


def _train(cfg: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    run, step = start_run(cfg, runtime)
    result = evaluate_and_save(run, 0) if step == 0 else {}  # the untrained score starts every curve
    started, window_loss, window_time, train_time, first_step = time.perf_counter(), [], 0.0, 0.0, step
    tokens_per_step = cfg.batch_size * cfg.seq_len * runtime.world_size
    bar = tqdm(total=cfg.steps, initial=step, disable=True if not (cfg.progress and runtime.is_main) else None,
               unit="step", dynamic_ncols=True)
    while step < cfg.steps:
        tick = time.perf_counter()
        batch = make_batch(cfg, run.data, run.generator).to(runtime.device)
        try:
            loss, grad_norm = train_step(run.trained, run.optimizer, run.scheduler, batch, cfg, runtime, step)
        except NonFiniteLossError as error:
            if runtime.is_main:
                write_metrics(cfg.metrics_path, {"event": "nonfinite", "step": step + 1, "message": str(error)})
            raise NonFiniteLossError(f"{error}; stopped without applying it. The last good checkpoint is "
                                     f"{cfg.checkpoint_path}") from None
        step += 1
        window_time += time.perf_counter() - tick
        train_time += time.perf_counter() - tick
        window_loss.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_step / (time.perf_counter() - tick):.0f}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            if runtime.is_main:  # the mean loss since the last record; tokens/s over train steps only
                write_metrics(cfg.metrics_path, {
                    "event": "train", "step": step, "loss": sum(window_loss) / len(window_loss),
                    "lr": run.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                    "tokens_per_s": tokens_per_step * len(window_loss) / window_time,
                    "elapsed_s": time.perf_counter() - started})
            window_loss, window_time = [], 0.0
        if step % cfg.eval_every == 0 or step == cfg.steps:
            result = evaluate_and_save(run, step)
    bar.close()
    spread = parameter_spread(run.model, runtime) if runtime.world_size > 1 else 0.0
    if runtime.is_main:
        write_metrics(cfg.metrics_path, {  # tokens/s over the train steps of this process (no evaluation)
            "event": "end", "step": step, "wall_s": time.perf_counter() - started, "rank_parameter_spread": spread,
            "tokens_per_s": tokens_per_step * (step - first_step) / train_time if train_time > 0 else None,
            "peak_memory_bytes": peak_memory_bytes(runtime.device)})
    return {"step": step, "eval": result, "rank_parameter_spread": spread}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad checkpoint, 3 non-finite loss)."""
    cfg = parse_args(argv)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was requested, but torch.cuda.is_available() is False on this machine "
              "(use --device cpu or auto)", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    try:
        train(cfg)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_CHECKPOINT
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NONFINITE
    return 0


if __name__ == "__main__":
    sys.exit(main())
