"""Training data for chapter 8, all generated or read locally (nothing is downloaded).

Three tasks:

**Long-range recall** (a scaled-down needle in a haystack). A stream of random filler tokens
holds ``F`` key-value facts; ``distance`` tokens later the same keys are queried in a shuffled
order and the model must answer each with its value. Token layout (vocabulary of
:class:`RecallTask`, every range disjoint)::

    ids 0, 1, 2            the markers KEY, VALUE, QUERY
    [3, 3 + K)             keys
    [.., .. + V)           values
    [.., .. + R)           filler

    stream:  filler ... KEY k1 VALUE v1 ... KEY kF VALUE vF  filler ...  QUERY kπ1 VALUE vπ1 ... QUERY kπF VALUE vπF
             |<------------ distance ------------>|
             fact block start                      query block start (the last 4F tokens)

Each fact and each query is 4 tokens; the queries fill the last ``4F`` tokens and start exactly
``distance`` tokens after the facts start. So the answer to the fact in place ``i`` asked in
place ``j`` lies ``distance + 4 (j - i)`` tokens after its value; over a sequence these
distances average exactly ``distance``. Queries come in a shuffled order so that the key, not
the position, says which value is asked. The loss and the accuracy count only the ``F`` answer
tokens (``mask``); every other target is noise (filler, random keys and values) that no model
can predict.

**Multi-query associative recall** (MQAR; Arora et al. 2023, "Zoology"), many facts at once, in
the same vocabulary without markers: ``N`` key-value pairs open the stream, back to back, and each
key is asked once later, at a random place in the filler, by the key alone; the target there is
its value (which the stream then shows, as in Zoology)::

    stream:  k1 v1 k2 v2 ... kN vN  filler ... kπ1 vπ1 filler ... kπ2 vπ2 ...
    mask:                                     ^ here the target is vπ1

Shown answers leave a way around the keys: a value already shown as an answer is not the answer
to a later question, so answering with a value of the pairs not yet shown, picked at random, gets
the j-th of N questions right with chance ``1 / (N - j)``: on average ``H_N / N`` (0.75, 0.52, 0.34
with 2, 4, 8 pairs, when their values differ) without ever matching a key. ``show_answers=False``
leaves filler after each question instead (the target is still the value): then a model that does
not match keys is at ``1 / N`` (a little more where two pairs share a value).

Only the answers count (``mask``, ``N`` per row). The key is the only cue to its value: a pair
is one token to the next, so the binding is the copy an induction head makes.

**Language modelling** on real text every machine already has: the source files of the Python
standard library, walked in a fixed order and cut at a byte budget (or any file given by path).
Byte-level tokens (vocabulary 256), a contiguous train/validation split, loss in bits per byte.

A batch is always ``Batch(inputs, targets, mask)``: int64 (b, n) inputs, targets = inputs shifted
by one (the next token), and a bool (b, n) mask of the targets that count.
"""

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
from torch import Tensor

from mac_minimal.checks import require_positive_int

__all__ = ["Batch", "RecallTask", "KEY", "VALUE", "QUERY", "recall_distance_range", "fact_block", "recall_batch",
           "mqar_min_length", "mqar_batch", "stdlib_files", "read_corpus", "split_corpus", "lm_batch",
           "lm_eval_batches"]

KEY, VALUE, QUERY = 0, 1, 2
TOKENS_PER_FACT = 4  # KEY k VALUE v (a query is QUERY k VALUE v)
STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "__pycache__"})


class Batch(NamedTuple):
    """inputs (b, n) int64; targets (b, n) int64, ``targets[:, t]`` = token after ``inputs[:, t]``;
    mask (b, n) bool, the targets that enter the loss."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in self))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        require_positive_int(name, value)


@dataclass(frozen=True)
class RecallTask:
    """Vocabulary of the recall task: 3 markers, then ``num_keys`` keys, ``num_values`` values,
    ``num_filler`` filler tokens (disjoint id ranges, in that order)."""

    num_keys: int = 32
    num_values: int = 32
    num_filler: int = 32

    def __post_init__(self) -> None:
        _check_positive(num_keys=self.num_keys, num_values=self.num_values, num_filler=self.num_filler)

    @property
    def key_start(self) -> int:
        return 3

    @property
    def value_start(self) -> int:
        return self.key_start + self.num_keys

    @property
    def filler_start(self) -> int:
        return self.value_start + self.num_values

    @property
    def vocab_size(self) -> int:
        return self.filler_start + self.num_filler


def recall_distance_range(seq_len: int, num_facts: int) -> tuple[int, int]:
    """Smallest and largest ``distance`` (inclusive) for ``recall_batch(.., seq_len, .., num_facts)``.

    The fact block must end before the query block starts (``distance >= 4F``) and start inside
    the stream of ``seq_len + 1`` tokens (``distance <= seq_len + 1 - 4F``).
    """
    _check_positive(seq_len=seq_len, num_facts=num_facts)
    low, high = TOKENS_PER_FACT * num_facts, seq_len + 1 - TOKENS_PER_FACT * num_facts
    if high < low:
        raise ValueError(f"seq_len must be >= {2 * low - 1} for num_facts={num_facts} (the facts, then their "
                         f"queries, {TOKENS_PER_FACT} tokens each), got {seq_len}")
    return low, high


def _filler_keys_values(b: int, length: int, count: int, generator: torch.Generator, task: RecallTask
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """A filler stream (b, length), ``count`` distinct keys per row and a value for each, (b, count) x2."""
    stream = torch.randint(task.filler_start, task.vocab_size, (b, length), generator=generator)
    keys = torch.rand(b, task.num_keys, generator=generator).argsort(-1)[:, :count] + task.key_start
    values = torch.randint(task.value_start, task.filler_start, (b, count), generator=generator)
    return stream, keys, values


def fact_block(marker: int, keys: Tensor, values: Tensor) -> Tensor:
    """``marker k1 VALUE v1 marker k2 VALUE v2 ...``: keys and values (b, f) -> tokens (b, 4f); the
    marker is KEY for a fact, QUERY for its question."""
    tokens = (torch.full_like(keys, marker), keys, torch.full_like(keys, VALUE), values)
    return torch.stack(tokens, dim=-1).flatten(1)


def recall_batch(batch_size: int, seq_len: int, distance: int, num_facts: int,
                 generator: torch.Generator, task: RecallTask = RecallTask()) -> Batch:
    """A batch of the recall task, a deterministic function of the generator's state.

    Returns ``Batch`` with inputs/targets (b, n=seq_len) and a mask with exactly ``num_facts``
    True entries per row: the positions whose target is an answer (the input there is the VALUE
    marker of a query). See the module docstring for the layout.
    """
    _check_positive(batch_size=batch_size)
    low, high = recall_distance_range(seq_len, num_facts)
    if num_facts > task.num_keys:
        raise ValueError(f"num_facts must be <= task.num_keys={task.num_keys} (each fact needs a key of its own), "
                         f"got {num_facts}")
    if not low <= distance <= high:
        raise ValueError(f"distance must lie in [{low}, {high}] for seq_len={seq_len}, "
                         f"num_facts={num_facts}, got {distance}")
    b, f, length = batch_size, num_facts, seq_len + 1
    stream, keys, values = _filler_keys_values(b, length, f, generator, task)
    order = torch.rand(b, f, generator=generator).argsort(-1)  # query j asks fact order[:, j]
    query_start = length - TOKENS_PER_FACT * f
    fact_start = query_start - distance
    stream[:, fact_start : fact_start + TOKENS_PER_FACT * f] = fact_block(KEY, keys, values)
    stream[:, query_start:] = fact_block(QUERY, keys.gather(1, order), values.gather(1, order))
    mask = torch.zeros(b, seq_len, dtype=torch.bool)
    mask[:, query_start + 2 :: TOKENS_PER_FACT] = True  # inputs[t] = the query's VALUE, targets[t] = answer
    return Batch(stream[:, :-1], stream[:, 1:], mask)


def mqar_min_length(num_pairs: int) -> int:
    """Shortest ``seq_len`` for :func:`mqar_batch` with ``num_pairs`` pairs: the pairs, then a
    two-token slot for each query (``seq_len + 1 >= 4N``)."""
    _check_positive(num_pairs=num_pairs)
    return 4 * num_pairs - 1


def mqar_batch(batch_size: int, seq_len: int, num_pairs: int, generator: torch.Generator,
               task: RecallTask = RecallTask(), show_answers: bool = True) -> Batch:
    """A batch of multi-query associative recall (the layout in the module docstring), a
    deterministic function of the generator's state.

    Returns ``Batch`` with inputs/targets (b, n=seq_len) and a mask with exactly ``num_pairs`` True
    entries per row: the positions holding a query's key, whose target is its value. The queries
    take distinct two-token slots after the pairs (slot ``j`` = positions ``2N + 2j, 2N + 2j + 1``),
    chosen at random, and ask the keys in a random order. ``show_answers=False``: the token after a
    query's key stays filler (the targets, the mask and the generator's draws are the same).
    """
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if num_pairs > task.num_keys:
        raise ValueError(f"num_pairs must be <= task.num_keys={task.num_keys} (each pair needs a key of its own), "
                         f"got {num_pairs}")
    if seq_len < mqar_min_length(num_pairs):
        raise ValueError(f"seq_len must be >= {mqar_min_length(num_pairs)} for num_pairs={num_pairs} (the pairs, "
                         f"then two tokens per query), got {seq_len}")
    b, n_pairs, length = batch_size, num_pairs, seq_len + 1
    stream, keys, values = _filler_keys_values(b, length, n_pairs, generator, task)
    stream[:, : 2 * n_pairs] = torch.stack((keys, values), dim=-1).reshape(b, 2 * n_pairs)
    num_slots = (length - 2 * n_pairs) // 2
    slots = torch.rand(b, num_slots, generator=generator).argsort(-1)[:, :n_pairs]   # (b, N) distinct slots
    order = torch.rand(b, n_pairs, generator=generator).argsort(-1)                   # slot j asks pair order[j]
    at = 2 * n_pairs + 2 * slots                                                      # (b, N) query positions
    stream.scatter_(1, at, keys.gather(1, order))
    targets = stream[:, 1:].clone()
    targets.scatter_(1, at, values.gather(1, order))
    if show_answers:
        stream.scatter_(1, at + 1, values.gather(1, order))
    mask = torch.zeros(b, seq_len, dtype=torch.bool)
    mask.scatter_(1, at, True)
    return Batch(stream[:, :-1], targets, mask)


def stdlib_files(root: str | os.PathLike | None = None) -> Iterator[Path]:
    """The ``.py`` files under ``root`` (default: this Python's standard library), in a fixed order.

    A depth-first walk with the entries of each directory sorted by name; third-party
    packages (``site-packages``, ``dist-packages``), ``__pycache__`` and symbolic links are
    skipped. The walk is lazy, so a byte budget stops it early.
    """
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    with os.scandir(root) as entries:
        ordered = sorted(entries, key=lambda e: e.name)
    for entry in ordered:
        if entry.is_symlink() or entry.name in STDLIB_SKIP:
            continue
        if entry.is_dir():
            yield from stdlib_files(entry.path)
        elif entry.name.endswith(".py"):
            yield Path(entry.path)


def read_corpus(path: str | os.PathLike | None = None, max_bytes: int = 4_000_000) -> tuple[bytes, str]:
    """Text as bytes and its SHA-256 (hex): the first ``max_bytes`` of the file at ``path``, or with
    ``path=None`` of the standard library's sources concatenated in :func:`stdlib_files` order
    (empty if there is none).

    The hash goes into every run's metrics, so two runs can be checked to have seen the same
    text (different Python versions ship different standard libraries).
    """
    _check_positive(max_bytes=max_bytes)
    if path is not None:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes)
    else:
        pieces, size = [], 0
        for file in stdlib_files():
            pieces.append(file.read_bytes()[: max_bytes - size])
            size += len(pieces[-1])
            if size == max_bytes:
                break
        data = b"".join(pieces)
    return data, hashlib.sha256(data).hexdigest()


def split_corpus(data: bytes, val_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """Byte tokens (uint8, to save memory) split into the first ``1 - val_fraction`` for training
    and the rest for validation: contiguous, so no validation text leaks into training windows.
    Validation gets at least one byte of a non-empty text; an empty one splits into two empty parts."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if not data:                                   # torch.frombuffer refuses an empty buffer
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8)
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    cut = len(tokens) - max(1, round(len(tokens) * val_fraction))
    return tokens[:cut], tokens[cut:]


def _windows(tokens: Tensor, starts: Tensor, seq_len: int) -> Batch:
    index = starts[:, None] + torch.arange(seq_len + 1)               # (b, n + 1)
    window = tokens[index].long()
    return Batch(window[:, :-1], window[:, 1:], torch.ones(len(starts), seq_len, dtype=torch.bool))


def _check_length(tokens: Tensor, seq_len: int) -> None:
    _check_positive(seq_len=seq_len)
    if tokens.dim() != 1 or len(tokens) < seq_len + 1:
        raise ValueError(f"need a 1-D token tensor of at least seq_len + 1 = {seq_len + 1} tokens, "
                         f"got shape {tuple(tokens.shape)}")


def lm_batch(tokens: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> Batch:
    """``batch_size`` windows of ``seq_len + 1`` bytes at random offsets of ``tokens`` (n,)."""
    _check_positive(batch_size=batch_size)
    _check_length(tokens, seq_len)
    starts = torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=generator)
    return _windows(tokens, starts, seq_len)


def lm_eval_batches(tokens: Tensor, batch_size: int, seq_len: int, max_batches: int) -> list[Batch]:
    """The validation set: consecutive non-overlapping windows from the start of ``tokens``, at
    most ``max_batches`` batches (the same ones at every evaluation, for every model)."""
    _check_positive(batch_size=batch_size, max_batches=max_batches)
    _check_length(tokens, seq_len)
    starts = torch.arange(0, len(tokens) - seq_len, seq_len)[: batch_size * max_batches]
    return [_windows(tokens, chunk, seq_len) for chunk in starts.split(batch_size)]
