"""A run's metrics file: JSON lines, one record per event.

Each record is a JSON object with an ``event`` (``start`` / ``train`` / ``eval`` / ``nonfinite``
/ ``end``) and the ``step`` it was written at; :func:`read_metrics` reads them back. Only rank 0
writes.
"""

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_metrics", "read_metrics", "start_metrics"]


def write_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to ``path`` as one line."""
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike, event: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, optionally only those of one ``event`` kind."""
    with open(path) as file:
        records = [json.loads(line) for line in file if line.strip()]
    return [r for r in records if event is None or r["event"] == event]


def start_metrics(path: Path, record: dict[str, Any], resume: bool) -> None:
    """Begin the metrics file with ``record``, the ``start`` record: afresh, or on ``resume`` keep only
    the records up to its ``step``, the checkpoint's (a crashed run may have logged steps that the
    resumed run will redo)."""
    kept = [r for r in read_metrics(path) if r["step"] <= record["step"]] if resume and path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    write_metrics(path, record)
