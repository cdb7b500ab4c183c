"""Checkpoints that resume a run exactly: weights, optimizer, schedule and every random state.

A checkpoint is a plain dict of tensors and builtins (:data:`CHECKPOINT_KEYS`, built by
:func:`checkpoint_contents`), so ``torch.load(weights_only=True)`` reads it without unpickling
code. It holds each rank's random states -- torch's CPU generator, its CUDA generator and the
data generator (:func:`rng_state`) -- so a run resumed with ``--resume`` draws, on a CPU, exactly
the batches and computes exactly the losses of the uninterrupted run. It is written atomically
(:func:`save_checkpoint`): a crash mid-write never leaves a truncated checkpoint behind.
"""

import os
import tempfile
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mac_minimal.runtime import Runtime
from mac_minimal.train_config import TrainConfig, build_model

__all__ = ["CheckpointError", "CHECKPOINT_TYPES", "CHECKPOINT_KEYS", "rng_state", "checkpoint_contents",
           "save_checkpoint", "load_checkpoint", "restore", "load_trained_model"]


class CheckpointError(ValueError):
    """A checkpoint is missing, would be overwritten, is not one of this trainer's, or does not fit the
    requested model."""


CHECKPOINT_TYPES = {"step": int, "model_name": str, "model_config": dict, "train_config": dict, "model": dict,
                    "optimizer": dict, "scheduler": dict, "rng": list}   # what checkpoint_contents writes
CHECKPOINT_KEYS = frozenset(CHECKPOINT_TYPES)


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Tensor | None]:
    """This process's random state: torch's CPU generator, its CUDA generator, the data generator."""
    return {"torch": torch.get_rng_state(), "data": generator.get_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def checkpoint_contents(step: int, cfg: TrainConfig, config: Any, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler, rng: list[dict[str, Tensor | None]]
                        ) -> dict[str, Any]:
    """The checkpoint after ``step`` steps: ``model`` (``cfg.model`` built with ``config``), optimizer
    and schedule state, and ``rng``, every rank's :func:`rng_state` in rank order."""
    return {"step": step, "model_name": cfg.model, "model_config": asdict(config), "train_config": asdict(cfg),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng}


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


def _one_line(error: Exception, limit: int = 200) -> str:
    """``"RuntimeError: <message>"`` on one line of at most ``limit`` characters (torch's load errors
    span several lines, one per mismatched tensor)."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit - 4] + " ..."


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict with dotted keys: ``{"memory": {"chunk_size": 8}}`` -> ``{"memory.chunk_size": 8}``."""
    flat = {}
    for key, value in config.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def _defaults(config: Any) -> dict[str, Any]:
    """The default of every field of the dataclass ``config``, nested dataclasses as dicts (a field
    without a default is left out): what a checkpoint saved before a field existed was trained with."""
    defaults = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            defaults[f.name] = _defaults(value)
        elif f.default is not MISSING:
            defaults[f.name] = f.default
    return defaults


def _foreign(payload: object) -> list[str]:
    """What makes ``payload`` no checkpoint of this trainer: each key of :data:`CHECKPOINT_TYPES` that
    is missing or holds another type (empty for a checkpoint of this trainer)."""
    if not isinstance(payload, dict):
        return [f"a {type(payload).__name__}, not a dict"]
    return [f"{key} missing" if key not in payload else
            f"{key} is a {type(payload[key]).__name__}, not a {kind.__name__}"
            for key, kind in sorted(CHECKPOINT_TYPES.items()) if not isinstance(payload.get(key), kind)]


def _read(path: Path, missing: str, after: str) -> dict[str, Any]:
    """The payload of the checkpoint at ``path`` (``weights_only``), or :class:`CheckpointError`:
    ``"<missing> <path>"`` for no file, else a message naming why it is not one of this trainer's,
    followed by ``after``."""
    if not path.is_file():
        raise CheckpointError(f"{missing} {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # truncated file, not a torch file, or one with objects we will not unpickle
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}){after}") from None
    foreign = _foreign(payload)
    if foreign:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer ({'; '.join(foreign)}){after}")
    return payload


def load_checkpoint(path: Path, model_name: str, config: Any) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check it is one of this trainer's (the keys and
    value types of :data:`CHECKPOINT_TYPES`) holding ``model_name`` with ``config``.

    Raises :class:`CheckpointError` naming every config field that differs (nested ones dotted,
    ``memory.chunk_size``). A field the checkpoint does not hold (added to the config after it was
    saved) counts as its default.
    """
    payload = _read(path, missing="--resume: no checkpoint at", after="; nothing was overwritten")
    if payload["model_name"] != model_name:
        raise CheckpointError(f"checkpoint {path} holds model {payload['model_name']!r}, "
                              f"requested {model_name!r}")
    saved, requested = _flat(payload["model_config"]), _flat(asdict(config))
    for key, default in _flat(_defaults(config)).items():     # a field newer than the checkpoint: its default
        saved.setdefault(key, default)
    differing = [f"{k}: checkpoint {saved.get(k)!r}, requested {requested.get(k)!r}"
                 for k in sorted(set(saved) | set(requested)) if saved.get(k) != requested.get(k)]
    if differing:
        raise CheckpointError(f"checkpoint {path} was trained with another model config; "
                              "differing fields: " + "; ".join(differing))
    return payload


def restore(path: Path, payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator, runtime: Runtime) -> int:
    """Load weights, optimizer, schedule and this rank's random states from ``payload`` (read from
    ``path`` by :func:`load_checkpoint`); returns the step reached.

    Raises :class:`CheckpointError` if the run has another number of processes, or if any state
    does not load (wrong shapes, missing entries).
    """
    if len(payload["rng"]) != runtime.world_size:
        raise CheckpointError(f"checkpoint was written by {len(payload['rng'])} process(es), this run has "
                              f"{runtime.world_size}: each process's data stream could not be continued")
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        rng = payload["rng"][runtime.rank]
        torch.set_rng_state(rng["torch"])
        generator.set_state(rng["data"])
        if runtime.device.type == "cuda" and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], runtime.device)
    except Exception as error:   # a foreign or tampered checkpoint with the right keys and config
        raise CheckpointError(f"{path} is not a checkpoint of this trainer or does not fit this model "
                              f"({_one_line(error)}); nothing was overwritten") from None
    return payload["step"]


def load_trained_model(path: str | os.PathLike) -> tuple[nn.Module, TrainConfig, int]:
    """The model a checkpoint of the trainer holds (float32, on the CPU, in eval mode), the run's
    :class:`TrainConfig` and the step it was saved at: a trained model to read, not to resume.

    Raises :class:`CheckpointError` if ``path`` is not a readable checkpoint of this trainer.
    """
    payload = _read(Path(path), missing="no checkpoint at", after="")
    cfg = TrainConfig(**payload["train_config"])
    model, _ = build_model(cfg, payload["model_config"]["vocab_size"])
    model.load_state_dict(payload["model"])
    return model.eval(), cfg, payload["step"]
