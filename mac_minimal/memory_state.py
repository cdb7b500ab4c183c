"""Chapter 1: a memory is a state, a write rule and a read rule.

The MM-Rec design keeps two banks of (key, value) slots:

* the **short-term** bank holds the most recent steps exactly;
* the **long-term** bank holds a fixed, small number of slots that fade slowly.

``MemoryState`` is the *state* and its *write rule* (``update_state_sequential``);
``read_memory`` is the *read rule*: scaled dot-product attention over the slots.

How steps map to slots (the design leaves it open, so it is decided here):

* a bank with ``s`` slots stores step ``t`` in slot ``t mod s`` (a ring buffer),
  so a state can be carried across calls for as many steps as one likes;
* a write blends: ``slot <- (1 - r) * slot + r * new``, with ``r = 1`` for the
  short-term bank (overwrite: it holds exactly the last ``num_short_slots`` steps)
  and ``r = long_write_rate`` for the long-term bank (step ``t`` keeps the weight
  ``r (1 - r)^j`` after ``j`` more writes to its slot: it fades, it is never cut off);
* slots start at zero; an empty slot is a zero key and a zero value, so a read gives
  it the weight of a score of 0 and takes nothing from it.

Shapes: ``b`` batch, ``s`` slots, ``c`` steps written in one call, ``m`` queries.
Nothing runs at import time.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from mac_minimal.checks import require_positive_int

BANKS = ("short", "long")


@dataclass
class MemoryStateConfig:
    """Sizes of the two banks.

    ``dim`` is the key width (``k_dim`` in the MM-Rec design), ``v_dim`` the value width.
    """

    dim: int = 16
    v_dim: int = 16
    num_short_slots: int = 8
    num_long_slots: int = 4
    long_write_rate: float = 0.5

    def __post_init__(self) -> None:
        for name in ("dim", "v_dim", "num_short_slots", "num_long_slots"):
            require_positive_int(f"MemoryStateConfig.{name}", getattr(self, name))
        if not 0.0 < self.long_write_rate <= 1.0:
            raise ValueError(f"long_write_rate must be in (0, 1], got {self.long_write_rate}")

    def num_slots(self, bank_type: str) -> int:
        """Number of slots of bank ``'short'`` or ``'long'``."""
        _check_bank(bank_type)
        return self.num_short_slots if bank_type == "short" else self.num_long_slots

    def write_rate(self, bank_type: str) -> float:
        """Blend rate ``r`` of the write rule: 1 (overwrite) for ``'short'``."""
        _check_bank(bank_type)
        return 1.0 if bank_type == "short" else self.long_write_rate


def _check_bank(bank_type: str) -> None:
    if bank_type not in BANKS:
        raise ValueError(f"bank_type must be one of {BANKS}, got {bank_type!r}")


def read_memory(query: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """The read rule (eq. 1.3 of chapter 1): ``softmax(q k^T / sqrt(d)) v`` over the slots of a bank.

    Args:
        query: ``(b, m, d)``, ``m`` queries of width ``d``.
        keys: ``(b, s, d)``, one key per slot.
        values: ``(b, s, v_dim)``, one value per slot.

    Returns:
        ``(out, weights)``: ``out`` ``(b, m, v_dim)`` the weighted sum of the values,
        ``weights`` ``(b, m, s)`` the attention weights (each row sums to 1).
    """
    _check_read(query, keys, values)
    scores = query @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5  # (b, m, s)
    weights = scores.softmax(dim=-1)
    return weights @ values, weights


def _check_read(query: Tensor, keys: Tensor, values: Tensor) -> None:
    """Raise a ValueError naming the expected shapes unless :func:`read_memory` can read."""
    for name, t in (("query", query), ("keys", keys), ("values", values)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D (batch, rows, features), got shape {tuple(t.shape)}")
    b, s, d = keys.shape
    if query.shape[0] != b or query.shape[2] != d:
        raise ValueError(f"query must have shape (b={b}, m, d={d}) to match keys, got {tuple(query.shape)}")
    if values.shape[:2] != (b, s):
        raise ValueError(f"values must have shape (b={b}, s={s}, v_dim) to match keys, "
                         f"got {tuple(values.shape)}")


class MemoryState:
    """Short-term and long-term banks of (key, value) slots, written one step at a time.

    ``MemoryState(config, batch_size)`` starts empty (all slots zero). Writes are
    sequential: each bank counts the steps written into it (``num_writes``) and the
    next write must be at exactly that step.

    A write never modifies a tensor in place: it builds new bank tensors, so autograd
    sees every write, and ``copy()`` gives an independent state without copying data.
    """

    def __init__(self, config: MemoryStateConfig, batch_size: int = 1, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        self.config = config
        self.dtype = dtype
        self.device = device
        k_short, v_short, k_long, v_long = self.get_initial_state(batch_size)
        self.batch_size = batch_size
        self.banks: dict[str, tuple[Tensor, Tensor]] = {"short": (k_short, v_short), "long": (k_long, v_long)}
        self.num_writes: dict[str, int] = {"short": 0, "long": 0}

    def get_initial_state(self, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Zero banks for a batch: ``(k_short, v_short, k_long, v_long)``. (The MM-Rec design's name for
        it; the package's modules call the same idea ``init_state``.)

        Shapes ``(b, num_short_slots, dim)``, ``(b, num_short_slots, v_dim)``,
        ``(b, num_long_slots, dim)``, ``(b, num_long_slots, v_dim)``.
        """
        require_positive_int("batch_size", batch_size)
        cfg = self.config
        zeros = dict(dtype=self.dtype, device=self.device)
        return (torch.zeros(batch_size, cfg.num_short_slots, cfg.dim, **zeros),
                torch.zeros(batch_size, cfg.num_short_slots, cfg.v_dim, **zeros),
                torch.zeros(batch_size, cfg.num_long_slots, cfg.dim, **zeros),
                torch.zeros(batch_size, cfg.num_long_slots, cfg.v_dim, **zeros))

    def get_bank(self, bank_type: str) -> tuple[Tensor, Tensor]:
        """All slots of a bank: keys ``(b, s, dim)``, values ``(b, s, v_dim)``."""
        _check_bank(bank_type)
        return self.banks[bank_type]

    def slot_of_step(self, bank_type: str, step: int) -> int:
        """The slot that step ``step`` is written to: ``step mod num_slots``."""
        return step % self.config.num_slots(bank_type)

    def update_state_sequential(self, bank_type: str, new_k: Tensor, new_v: Tensor, step: int) -> None:
        """The write rule (eq. 1.1 of chapter 1): write ``c`` steps, from ``step`` on, into a bank.

        Step ``t`` goes to slot ``t mod s`` as ``slot <- (1 - r) slot + r new`` (``r`` from
        ``config.write_rate``). ``step`` must equal ``num_writes[bank_type]``.

        Args:
            bank_type: ``'short'`` or ``'long'``.
            new_k: ``(b, c, dim)``, or ``(c, dim)`` meaning the same keys for every
                batch row (broadcast over the batch).
            new_v: ``(b, c, v_dim)`` or ``(c, v_dim)``, the matching values.
            step: the sequence step of ``new_k[:, 0]``.
        """
        _check_bank(bank_type)
        new_k = self._as_batched(new_k, self.config.dim, "new_k")
        new_v = self._as_batched(new_v, self.config.v_dim, "new_v")
        if new_k.shape[1] != new_v.shape[1]:
            raise ValueError(f"new_k and new_v must write the same number of steps, "
                             f"got {new_k.shape[1]} and {new_v.shape[1]}")
        expected = self.num_writes[bank_type]
        if step != expected:
            raise IndexError(f"writes are sequential: the next step of the {bank_type!r} bank is "
                             f"{expected}, got step={step}")
        rate = self.config.write_rate(bank_type)
        keys, values = self.banks[bank_type]
        for i in range(new_k.shape[1]):
            slot = self.slot_of_step(bank_type, step + i)
            old_k, old_v = keys[:, slot], values[:, slot]
            keys, values = keys.clone(), values.clone()
            keys[:, slot] = (1 - rate) * old_k + rate * new_k[:, i]
            values[:, slot] = (1 - rate) * old_v + rate * new_v[:, i]
        self.banks[bank_type] = (keys, values)
        self.num_writes[bank_type] = expected + new_k.shape[1]

    def get_state_at_step(self, bank_type: str, step: int) -> tuple[Tensor, Tensor]:
        """The slot that holds step ``step``: ``(k_step, v_step)``, ``(b, dim)`` and ``(b, v_dim)``.

        Only the last ``num_slots`` steps written are held; asking for an older step (its
        slot was written again since) or a step not written yet raises ``IndexError``.
        For the short bank this is exactly what was written; for the long bank with
        ``long_write_rate < 1`` the slot also keeps a fading trace of older steps.
        """
        _check_bank(bank_type)
        written = self.num_writes[bank_type]
        first = max(0, written - self.config.num_slots(bank_type))
        if not first <= step < written:
            held = f"it holds steps [{first}, {written})" if written else "nothing is written yet"
            raise IndexError(f"step {step} is not held by the {bank_type!r} bank: {held}")
        keys, values = self.banks[bank_type]
        slot = self.slot_of_step(bank_type, step)
        return keys[:, slot], values[:, slot]

    def read(self, query: Tensor, banks: tuple[str, ...] = BANKS) -> tuple[Tensor, Tensor]:
        """Read by attention over the slots of ``banks``, concatenated in that order.

        ``query`` ``(b, m, dim)`` -> ``(out (b, m, v_dim), weights (b, m, total slots))``.
        """
        return read_memory(query, *self.slots(banks))

    def slots(self, banks: tuple[str, ...] = BANKS) -> tuple[Tensor, Tensor]:
        """The slots of ``banks`` side by side: keys ``(b, s_total, dim)``, values ``(b, s_total, v_dim)``."""
        if not banks:
            raise ValueError(f"banks must name at least one of {BANKS}")
        for bank_type in banks:
            _check_bank(bank_type)
        keys = torch.cat([self.banks[name][0] for name in banks], dim=1)  # (b, s_total, dim)
        values = torch.cat([self.banks[name][1] for name in banks], dim=1)  # (b, s_total, v_dim)
        return keys, values

    def copy(self) -> "MemoryState":
        """An independent state holding the same tensors (writes replace, never modify, them)."""
        new = MemoryState.__new__(MemoryState)
        new.config, new.dtype, new.device, new.batch_size = self.config, self.dtype, self.device, self.batch_size
        new.banks = dict(self.banks)
        new.num_writes = dict(self.num_writes)
        return new

    def with_banks(self, banks: dict[str, tuple[Tensor, Tensor]], steps: int) -> "MemoryState":
        """A copy whose banks are ``banks`` after ``steps`` more writes to each: the bulk write of
        chapter 3's hybrid block, which computes the slots of many steps at once (by a scan).

        ``banks`` maps "short" and "long" to (keys, values) of the same shapes as now.
        """
        if set(banks) != set(BANKS):
            raise ValueError(f"banks must have the keys {BANKS}, got {sorted(banks)}")
        for name, (keys, values) in banks.items():
            old_keys, old_values = self.banks[name]
            if keys.shape != old_keys.shape or values.shape != old_values.shape:
                raise ValueError(f"bank {name!r} must keep its shapes {tuple(old_keys.shape)}, "
                                 f"{tuple(old_values.shape)}, got {tuple(keys.shape)}, {tuple(values.shape)}")
        new = self.copy()
        new.banks = dict(banks)
        new.num_writes = {name: count + steps for name, count in self.num_writes.items()}
        return new

    def _as_batched(self, t: Tensor, width: int, name: str) -> Tensor:
        """``(c, width)`` -> ``(b, c, width)`` by broadcasting; check ``(b, c, width)`` and the dtype."""
        if t.dtype != self.dtype:
            raise TypeError(f"{name} must have the state's dtype {self.dtype}, got {t.dtype}")
        shape = tuple(t.shape)
        if t.dim() == 2:
            t = t.unsqueeze(0).expand(self.batch_size, -1, -1)  # (c, w) -> (b, c, w)
        if t.dim() != 3 or t.shape[0] != self.batch_size or t.shape[2] != width:
            raise ValueError(f"{name} must have shape (c, {width}) or (batch={self.batch_size}, c, {width}), "
                             f"got {shape}")
        return t
