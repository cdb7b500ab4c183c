"""The command line of the trainer: ``python -m mac_minimal --help`` (``python -m mac_minimal.train``,
the spelling of the recorded commands, runs the same).

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

from mac_minimal.carried_state import EPISODE_DISTANCES
from mac_minimal.checkpoint import CheckpointError
from mac_minimal.mac_attention import MEMORY_INPUTS
from mac_minimal.runtime import DeviceUnavailableError
from mac_minimal.task_data import DataError
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
  python -m mac_minimal --model mac --task recall             # CPU or GPU, whichever there is
  python -m mac_minimal --model full_attention --task lm --data notes.txt
  python -m mac_minimal --model mac --task recall --resume    # continue runs/mac-recall
  torchrun --nproc_per_node=4 -m mac_minimal --model mac --task lm --device cuda

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
    """Name the command-line flags in a config error: the field it starts with (``"lr must be > 0"`` ->
    ``"--lr must be > 0"``, ``"MACAttentionConfig.segment_len must ..."`` -> ``"--segment-len must ..."``)
    and every ``field=value`` in it (``"got dim=30, heads=4"`` -> ``"got --dim=30, --heads=4"``)."""
    names = {f.name for f in fields(TrainConfig)}

    def flag(match: re.Match) -> str:
        return "--" + match[1].replace("_", "-") if match[1] in names else match[0]

    message = re.sub(r"^(?:\w+Config\.)?(\w+)(?=\s+must\b)", flag, message)
    return re.sub(r"(?<!\S)(\w+)(?==)", flag, message)


# The flags that take a number, by group: TrainConfig field -> (type, help). The flag is the field's
# name with dashes (``segment_len`` -> ``--segment-len``), its default the field's; parse_args adds the others.
MODEL_FLAGS = {
    "dim": (int, "model width of mac"),
    "depth": (int, "number of blocks"),
    "heads": (int, "attention heads"),
    "segment_len": (int, "MAC attention segment; mag, mal, swa: the attention window"),
    "num_persistent": (int, "persistent slots (MAC) or tokens (mag, mal, swa)"),
    "chunk_size": (int, "MAC memory chunk"),
    "memory_max_lr": (float, "MAC memory: cap of the step size theta_t"),
    "memory_max_momentum": (float, "MAC memory: cap of the momentum eta_t (1: the paper's; 0.9 keeps "
                                   "a write's effect from growing with its age; 0: no momentum)"),
    "memory_theta_logit_init": (float, "MAC memory: initial bias of the step-size logit, "
                                       "theta_t = memory_max_lr * sigmoid(logit)"),
    "memory_alpha_logit_init": (float, "MAC memory: initial bias of the forgetting logit, "
                                       "alpha_t = sigmoid(logit); -7 remembers ~1,100 tokens"),
    "memory_conv_size": (int, "memory: width K of a causal depthwise convolution over time after the q, k, "
                              "v projections (the paper's section 4.4), starting as the identity; 0: none"),
}
TASK_FLAGS = {
    "max_bytes": (int, "lm: bytes of text to read"),
    "num_facts": (int, "recall: facts per sequence; mqar: the most key-value pairs (each batch draws "
                       "--min-facts to this)"),
    "min_facts": (int, "mqar: the fewest key-value pairs a training batch draws (the evaluation still asks "
                       "1, 2, 4, ...)"),
    "num_values": (int, "recall: distinct values (chance accuracy = 1 / num_values)"),
    "num_keys": (int, "recall: distinct keys (>= num_facts)"),
}
OPTIMISATION_FLAGS = {
    "seq_len": (int, "tokens per training sequence"),
    "batch_size": (int, "sequences per step per process"),
    "steps": (int, "optimizer steps in total"),
    "lr": (float, "peak learning rate"),
    "min_lr_ratio": (float, "final lr / peak lr"),
    "warmup_steps": (int, "steps of linear lr warmup"),
    "weight_decay": (float, "AdamW decay (matrices only)"),
    "grad_clip": (float, "max global gradient norm"),
    "seed": (int, "weights and data stream"),
}
RUN_FLAGS = {
    "eval_every": (int, "evaluate and checkpoint every N steps"),
    "eval_batches": (int, "batches per evaluation"),
    "log_every": (int, "write train metrics every N steps"),
}


def _add_flags(group: argparse._ArgumentGroup, flags: dict[str, tuple[type, str]], defaults: TrainConfig) -> None:
    """Add to ``group`` one flag per entry of ``flags`` (a table above), defaulting to the field's value in
    ``defaults``."""
    for field, (kind, text) in flags.items():
        group.add_argument("--" + field.replace("_", "-"), type=kind, default=getattr(defaults, field), help=text)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line into a :class:`TrainConfig`; a bad argument exits with one line, status 2."""
    d = TrainConfig()
    p = _Parser(
        prog="python -m mac_minimal",
        description="Train MAC, MAC without memory, MAG, MAL, sliding-window attention or a full-attention "
                    "transformer on long-range recall or byte-level language modelling. CPU or GPU; under "
                    "torchrun, multi-GPU (DDP).",
        epilog=EXAMPLES, formatter_class=_HelpFormatter)
    g = p.add_argument_group("model (the non-mac models get the width that matches mac's parameter count)")
    g.add_argument("--model", choices=list(MODELS), default=d.model)
    _add_flags(g, MODEL_FLAGS, d)
    g.add_argument("--memory-scale-init", type=float_or_none, default=d.memory_scale_init,
                   help="MAC: a learned scalar on the memory term of eq. 25, initialised to this; "
                        "none: no scale, o = y + M(y)")
    g.add_argument("--memory-input", choices=MEMORY_INPUTS, default=d.memory_input,
                   help="MAC: what the memory writes and eq. 25 reads: output, the attention output y "
                        "(the paper's eq. 24); input, the layer's input x (as titans-pytorch)")
    g.add_argument("--memory-write-norm", action=argparse.BooleanOptionalAction, default=d.memory_write_norm,
                   help="MAC memory: a write moves the layer norm's gain and bias too (the default); "
                        "--no-memory-write-norm: only the matrices W1, W2, which a key selects")
    g = p.add_argument_group("task")
    g.add_argument("--task", choices=TASKS, default=d.task,
                   help="recall: facts far back in filler; mqar: multi-query associative recall (Zoology); "
                        "lm: bytes of text")
    g.add_argument("--data", default=d.data, metavar="PATH",
                   help="lm: a text file (default: the Python standard library's sources)")
    _add_flags(g, TASK_FLAGS, d)
    g.add_argument("--mqar-show-answers", action=argparse.BooleanOptionalAction, default=d.mqar_show_answers,
                   help="mqar: the stream shows each question's answer right after it, as in Zoology (the "
                        "default); --no-mqar-show-answers: filler there, so that no answer can be had by "
                        "elimination (a value already shown is not the answer)")
    g.add_argument("--eval-distances", type=int_list, default=d.eval_distances,
                   metavar="D1,D2,...", help="recall: distances to evaluate (default: 5 across the range)")
    _add_flags(p.add_argument_group("optimisation"), OPTIMISATION_FLAGS, d)
    g = p.add_argument_group("run")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="auto: cuda if available")
    g.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/MODEL-TASK)")
    g.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.pt (the model flags must match it; the others are "
                        "taken from this command line, so --steps can extend a run)")
    _add_flags(g, RUN_FLAGS, d)
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--time-limit", type=float, default=d.time_limit, metavar="SECONDS",
                   help="stop once this much wall time has passed since the run (or its resumption) started, "
                        "compiling included: evaluate, checkpoint and write the end record as after the last "
                        "step; --resume continues to --steps")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile each attention layer (mac_minimal.compiled.compile_regions; mac, "
                        "mac_no_memory, full_attention): faster steps after a first step that compiles; "
                        "the same checkpoints")
    g.add_argument("--recompute-memory", action="store_true",
                   help="mac, mag, mal: run each memory write again in backward instead of keeping its "
                        "intermediates (mac_minimal.neural_memory.recompute_writes): less memory per step, "
                        "a slower step, the same numbers and checkpoints")
    g.add_argument("--carry-state", type=float, default=d.carry_state, metavar="P",
                   help="mac: carry the memory from each batch to the next (truncated backpropagation through "
                        "time, mac_minimal.carried_state), each row restarting fresh with probability P per "
                        "step; default: every batch starts fresh")
    g.add_argument("--episode-windows", type=int, default=d.episode_windows, metavar="E",
                   help="recall with --carry-state: each row's fact is asked at the end of every window for "
                        "1 to E windows (mac_minimal.carried_state.RecallEpisodes); memories restart only "
                        "where an episode starts")
    g.add_argument("--episode-distances", choices=EPISODE_DISTANCES, default=d.episode_distances,
                   help="with --episode-windows: the distance of each fact from its first question, uniform "
                        "in [4, seq_len - 3] or log-uniform (4-8 tokens asked as often as 64-125)")
    try:
        return TrainConfig(**vars(p.parse_args(argv)))
    except ValueError as error:
        p.error(_as_flag(str(error)))


def _fail(error: Exception, status: int) -> int:
    """Print ``error`` as one line on stderr; return ``status``."""
    print(f"error: {error}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad argument or checkpoint, 3 non-finite loss)."""
    cfg = parse_args(argv)
    try:
        train(cfg)
    except (DeviceUnavailableError, DataError) as error:   # no CUDA for --device cuda; too little --data text
        return _fail(error, EXIT_BAD_ARGUMENTS)
    except CheckpointError as error:
        return _fail(error, EXIT_BAD_CHECKPOINT)
    except NonFiniteLossError as error:
        return _fail(error, EXIT_NONFINITE)
    return 0
