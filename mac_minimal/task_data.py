"""The batches a run trains on, from its config: the recall task, MQAR or a text corpus.

:mod:`mac_minimal.data` makes the batches; this module picks them for a :class:`TrainConfig`.
Each rank draws its batches from its own generator (seeded by :func:`data_seed`), whose state
the checkpoint keeps, so a resumed run continues the same stream.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from mac_minimal.data import (Batch, lm_batch, mqar_batch, read_corpus, recall_batch, recall_distance_range,
                             split_corpus)
from mac_minimal.train_config import TrainConfig

__all__ = ["DataError", "TaskData", "prepare_data", "data_seed", "make_batch"]


class DataError(ValueError):
    """The text of ``--task lm`` is too short for one window in its training or its validation part."""


@dataclass
class TaskData:
    """What a task needs to make batches: its vocabulary, and for ``lm`` the split bytes and their hash
    (``train_tokens``, ``val_tokens``: (n_bytes,) uint8)."""

    vocab_size: int
    train_tokens: Tensor | None = None
    val_tokens: Tensor | None = None
    sha256: str | None = None


def prepare_data(cfg: TrainConfig) -> TaskData:
    """The task's vocabulary; for ``lm`` also the text (read once), its split and its SHA-256.

    Raises :class:`DataError` unless each part holds a window of ``seq_len + 1`` bytes (training
    draws windows from the first part, evaluation reads them from the second).
    """
    if cfg.task in ("recall", "mqar"):
        return TaskData(cfg.recall_task.vocab_size)
    text, digest = read_corpus(cfg.data, cfg.max_bytes)
    train_tokens, val_tokens = split_corpus(text)
    if min(len(train_tokens), len(val_tokens)) < cfg.seq_len + 1:
        source = "the standard library's sources" if cfg.data is None else repr(cfg.data)
        raise DataError(f"--data/--max-bytes must give seq_len + 1 = {cfg.seq_len + 1} bytes (--seq-len "
                        f"{cfg.seq_len}) to each of the training and validation parts, got {len(text)} bytes of "
                        f"{source} (--max-bytes {cfg.max_bytes}), split {len(train_tokens)} + {len(val_tokens)}")
    return TaskData(256, train_tokens, val_tokens, digest)


def data_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s data stream: distinct for every (seed, rank < 65535), and never the
    model-initialisation seed, so data and weights are not drawn from the same random numbers."""
    return seed * 2**16 + rank + 1


def make_batch(cfg: TrainConfig, data: TaskData, generator: torch.Generator) -> Batch:
    """One training batch, (batch_size, seq_len) tokens. Recall: a distance drawn uniformly from the
    whole range the sequence length allows, so the model meets every distance it is evaluated on.
    MQAR: a number of pairs drawn uniformly from ``min_facts`` (1 by default, then every count it is
    evaluated at) to ``num_facts``.
    LM: random windows of the training bytes."""
    if cfg.task == "recall":
        low, high = recall_distance_range(cfg.seq_len, cfg.num_facts)
        distance = int(torch.randint(low, high + 1, (1,), generator=generator))
        return recall_batch(cfg.batch_size, cfg.seq_len, distance, cfg.num_facts, generator, cfg.recall_task)
    if cfg.task == "mqar":
        pairs = int(torch.randint(cfg.min_facts, cfg.num_facts + 1, (1,), generator=generator))
        return mqar_batch(cfg.batch_size, cfg.seq_len, pairs, generator, cfg.recall_task, cfg.mqar_show_answers)
    return lm_batch(data.train_tokens, cfg.batch_size, cfg.seq_len, generator)
