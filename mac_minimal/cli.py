"""The command line of the trainer: ``python -m mac_minimal.train --help``.

:func:`parse_args` turns the flags into a :class:`~mac_minimal.train_config.TrainConfig` (one
flag per field); :func:`main` runs :func:`~mac_minimal.train.train` on it and turns what can go
wrong into one line on stderr and an exit status: 0 done, 2 a bad argument or checkpoint, 3 a
non-finite loss.
"""

import argparse
import re
import sys
from dataclasses import fields
from typing import NoReturn

import torch

from mac_minimal.checkpoint import CheckpointError
from mac_minimal.train import NonFiniteLossError, train
from mac_minimal.train_config import MODELS, TASKS, TrainConfig

__all__ = ["EXIT_BAD_ARGUMENTS", "EXIT_BAD_CHECKPOINT", "EXIT_NONFINITE", "parse_args", "main"]

EXIT_BAD_ARGUMENTS = 2      # argparse's own status for a bad command line
EXIT_BAD_CHECKPOINT = 2
EXIT_NONFINITE = 3


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


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad argument or checkpoint, 3 non-finite loss)."""
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
