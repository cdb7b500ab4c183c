"""The loss a run minimises and the scores it reports.

Both come from one per-token cross-entropy (:func:`per_token_loss_and_correct`). Training
averages it over the targets in the batch's mask (:func:`compute_loss`: the answers for recall,
every byte for ``lm``); evaluation reports recall accuracy against distance
(:func:`evaluate_recall`, at :func:`default_eval_distances` unless the run names its own), MQAR
accuracy against the number of pairs (:func:`evaluate_mqar`), or validation bits per byte
(:func:`evaluate_lm`).
"""

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mac_minimal.data import Batch, RecallTask, lm_eval_batches, mqar_batch, recall_batch, recall_distance_range
from mac_minimal.runtime import autocast
from mac_minimal.task_data import TaskData
from mac_minimal.train_config import TrainConfig

__all__ = ["EVAL_SEED", "per_token_loss_and_correct", "compute_loss", "loss_and_state", "default_eval_distances",
           "evaluate_recall", "mqar_pair_counts", "beyond_segment", "MQARScores", "score_mqar_batch", "evaluate_mqar",
           "evaluate_lm", "evaluate"]

EVAL_SEED = 2**31 - 1  # the recall evaluation batches: the same for every model, seed and run


def per_token_loss_and_correct(model: nn.Module, batch: Batch, device: torch.device) -> tuple[Tensor, Tensor]:
    """Every target's cross-entropy (nats) and whether the argmax hit it (1.0 or 0.0), both (b, n) float32;
    the batch's mask is not applied."""
    losses, correct, _ = _score(model, batch, device, None)
    return losses, correct


def _score(model: nn.Module, batch: Batch, device: torch.device, state: Any) -> tuple[Tensor, Tensor, Any]:
    """:func:`per_token_loss_and_correct` and the model's state after the batch."""
    with autocast(device):
        logits, state = model(batch.inputs) if state is None else model(batch.inputs, state)  # (b, n, V)
    logits = logits.float()
    losses = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none")
    correct = (logits.argmax(-1) == batch.targets).float()
    return losses.view_as(correct), correct, state


def compute_loss(model: nn.Module, batch: Batch, device: torch.device) -> Tensor:
    """Mean cross-entropy over the targets in ``batch.mask`` (the answers for recall, all bytes for lm)."""
    return loss_and_state(model, batch, device)[0]


def loss_and_state(model: nn.Module, batch: Batch, device: torch.device, state: Any = None) -> tuple[Tensor, Any]:
    """:func:`compute_loss` from ``state`` (None: a fresh text), and the state after the batch."""
    losses, _, state = _score(model, batch, device, state)
    mask = batch.mask.float()
    return (losses * mask).sum() / mask.sum(), state


def default_eval_distances(seq_len: int, num_facts: int, count: int = 5) -> list[int]:
    """``count`` distances spread evenly over the range ``seq_len`` allows (ends included)."""
    low, high = recall_distance_range(seq_len, num_facts)
    return sorted({round(low + (high - low) * i / (count - 1)) for i in range(count)})


@torch.no_grad()
def evaluate_recall(model: nn.Module, distances: list[int], seq_len: int, num_facts: int, batch_size: int,
                    num_batches: int, device: torch.device | str = "cpu", task: RecallTask = RecallTask()
                    ) -> dict[str, Any]:
    """Recall accuracy against distance: for each distance, ``num_batches`` fixed batches (drawn from
    :data:`EVAL_SEED`), the fraction of answer tokens whose argmax is right. Returns
    ``{"accuracy": {distance: acc}, "loss": mean answer loss, "mean_accuracy": mean over distances}``."""
    device = torch.device(device)
    accuracy, losses = {}, []
    was_training, _ = model.training, model.eval()
    for distance in distances:
        generator = torch.Generator().manual_seed(EVAL_SEED + distance)
        hits, count = 0.0, 0.0
        for _ in range(num_batches):
            batch = recall_batch(batch_size, seq_len, distance, num_facts, generator, task).to(device)
            loss, correct = per_token_loss_and_correct(model, batch, device)
            hits += float(correct[batch.mask].sum())
            count += float(batch.mask.sum())
            losses.append(float(loss[batch.mask].mean()))
        accuracy[distance] = hits / count
    model.train(was_training)
    return {"accuracy": accuracy, "loss": sum(losses) / len(losses),
            "mean_accuracy": sum(accuracy.values()) / len(accuracy)}


def mqar_pair_counts(num_pairs: int) -> list[int]:
    """The pair counts an MQAR run is evaluated at: 1, 2, 4, ... below ``num_pairs``, and ``num_pairs``."""
    return sorted({*(2**i for i in range(num_pairs.bit_length()) if 2**i < num_pairs), num_pairs})


def beyond_segment(batch: Batch, num_pairs: int, segment_len: int) -> Tensor:
    """bool (b, n): the answers of ``batch`` (an :func:`~mac_minimal.data.mqar_batch`) whose query
    sits in a later segment than its pair's value, so that attention inside a segment cannot see it."""
    pair_keys = batch.inputs[:, : 2 * num_pairs : 2]                            # (b, N)
    pair = (batch.inputs.unsqueeze(-1) == pair_keys.unsqueeze(1)).float().argmax(-1)   # (b, n) pair index
    positions = torch.arange(batch.inputs.shape[1])
    return batch.mask & ((2 * pair + 1) // segment_len < positions // segment_len)


class MQARScores(NamedTuple):
    """One MQAR batch scored: answers right and answers, over all questions and over those beyond
    their pair's segment; the mean loss at the answers."""

    right: float
    answers: float
    right_beyond: float
    answers_beyond: float
    loss: float


@torch.no_grad()
def score_mqar_batch(model: nn.Module, batch: Batch, num_pairs: int, segment_len: int,
                     device: torch.device) -> MQARScores:
    """Score ``model`` on one :func:`~mac_minimal.data.mqar_batch` of ``num_pairs`` pairs (on the CPU)."""
    far = beyond_segment(batch, num_pairs, segment_len).to(device)
    batch = batch.to(device)
    loss, correct = per_token_loss_and_correct(model, batch, device)
    return MQARScores(float(correct[batch.mask].sum()), float(batch.mask.sum()), float(correct[far].sum()),
                      float(far.sum()), float(loss[batch.mask].mean()))


@torch.no_grad()
def evaluate_mqar(model: nn.Module, seq_len: int, max_pairs: int, segment_len: int, batch_size: int,
                  num_batches: int, device: torch.device | str = "cpu", task: RecallTask = RecallTask(),
                  show_answers: bool = True) -> dict[str, Any]:
    """MQAR accuracy against the number of pairs (:func:`mqar_pair_counts`): for each count N,
    ``num_batches`` fixed batches (drawn from :data:`EVAL_SEED`), the fraction of answers right, over
    all queries (``accuracy``) and over those asked beyond their pair's segment (``beyond_segment``).
    ``mean_accuracy`` averages ``accuracy`` over the counts. ``show_answers``: as in
    :func:`~mac_minimal.data.mqar_batch`."""
    device = torch.device(device)
    accuracy, beyond, losses = {}, {}, []
    was_training, _ = model.training, model.eval()
    for pairs in mqar_pair_counts(max_pairs):
        generator = torch.Generator().manual_seed(EVAL_SEED + pairs)
        hits, count, far_hits, far_count = 0.0, 0.0, 0.0, 0.0
        for _ in range(num_batches):
            batch = mqar_batch(batch_size, seq_len, pairs, generator, task, show_answers)
            scores = score_mqar_batch(model, batch, pairs, segment_len, device)
            hits, count = hits + scores.right, count + scores.answers
            far_hits, far_count = far_hits + scores.right_beyond, far_count + scores.answers_beyond
            losses.append(scores.loss)
        accuracy[pairs] = hits / count
        beyond[pairs] = far_hits / far_count if far_count else None
    model.train(was_training)
    return {"accuracy": accuracy, "beyond_segment": beyond, "loss": sum(losses) / len(losses),
            "mean_accuracy": sum(accuracy.values()) / len(accuracy)}


@torch.no_grad()
def evaluate_lm(model: nn.Module, batches: list[Batch], device: torch.device | str = "cpu") -> dict[str, float]:
    """Validation loss over ``batches``: ``{"loss": nats per byte, "bpb": bits per byte = loss / ln 2}``."""
    device = torch.device(device)
    was_training, _ = model.training, model.eval()
    total, count = 0.0, 0
    for batch in batches:
        losses, _ = per_token_loss_and_correct(model, batch.to(device), device)
        total += float(losses.sum())
        count += losses.numel()
    model.train(was_training)
    return {"loss": total / count, "bpb": total / count / math.log(2)}


def evaluate(model: nn.Module, cfg: TrainConfig, data: TaskData, device: torch.device) -> dict[str, Any]:
    """The run's evaluation: :func:`evaluate_recall` at ``cfg.eval_distances`` (default: five across
    the range), or :func:`evaluate_lm` on (at most) ``cfg.eval_batches`` batches of validation windows."""
    if cfg.task == "recall":
        distances = cfg.eval_distances or default_eval_distances(cfg.seq_len, cfg.num_facts)
        return evaluate_recall(model, distances, cfg.seq_len, cfg.num_facts, cfg.batch_size,
                               cfg.eval_batches, device, task=cfg.recall_task)
    if cfg.task == "mqar":
        return evaluate_mqar(model, cfg.seq_len, cfg.num_facts, cfg.segment_len, cfg.batch_size,
                             cfg.eval_batches, device, task=cfg.recall_task, show_answers=cfg.mqar_show_answers)
    return evaluate_lm(model, lm_eval_batches(data.val_tokens, cfg.batch_size, cfg.seq_len, cfg.eval_batches), device)
