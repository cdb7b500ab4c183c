"""Chapter 3: the "hybrid" MM-Rec block -- scan what can be scanned, loop the rest.

The MM-Rec design's future work: "keep Associative Scan parallel, make only MDI sequential". Of
the nine steps of an MM-Rec step (see :mod:`mac_minimal.recurrence`), only the core
formula reads ``h_{t-1}`` through a non-linearity,

    h_t = z_t * sigmoid(W_g h_{t-1}) + gamma_t * h_{t-1},

so only it stays a loop. Everything else runs over the whole sequence at once:

* projections ``q, k, v, z, gamma`` (``MMRecBlock.project``);
* the cumulative decay ``A_t = gamma_t A_{t-1}``: a linear recurrence, by
  :func:`mac_minimal.scan_kernel.associative_scan`;
* the long-term bank: slot ``t mod s`` is written ``(1 - r) slot + r k_t``, a linear
  recurrence along every ``s``-th step, so one scan over ``(b, n / s, s, 2, d)``;
* the short-term bank: step ``t`` reads the last ``s`` values of ``h`` (a window, by
  indexing), once the loop has produced every ``h_t``;
* the memory read, residual and FFN for all ``b * n`` positions as one batch
  (``MMRecBlock.readout``).

It computes exactly what :class:`~mac_minimal.recurrence.MMRecBlock` computes (tested in
float64, gradients included) with the same parameters. Shapes: ``b`` batch, ``n``
sequence, ``d`` model dim, ``s`` slots. Nothing runs at import time.
"""

import torch
from einops import rearrange
from torch import Tensor

from mac_minimal.recurrence import MMRecBlock, MMRecState
from mac_minimal.scan_kernel import associative_scan


def _bank_reads(history: Tensor, step: int, n: int, slots: int) -> Tensor:
    """What a ring-buffer bank holds before each step, in slot order, and after the last.

    ``history`` ``(b, slots + n, ...)``: the bank's initial slots in the order of the
    virtual steps ``step - slots .. step - 1``, then the values written at steps
    ``step .. step + n - 1``. Returns ``(b, n + 1, slots, ...)``: row ``t`` is the bank
    before step ``step + t`` (row ``n``: after the last), slot ``j`` holding the latest
    value written at a step ``= j (mod slots)``, i.e. ``history[t + (j - step - t) mod slots]``.
    """
    t = torch.arange(n + 1, device=history.device)[:, None]
    j = torch.arange(slots, device=history.device)[None, :]
    return history[:, t + (j - step - t) % slots]  # (b, n + 1, slots, ...)


def _virtual_order(bank: Tensor, step: int) -> Tensor:
    """Bank ``(b, s, ...)`` in slot order -> the order of its last writes, steps ``step - s .. step - 1``."""
    s = bank.shape[1]
    return bank[:, [(step + i) % s for i in range(s)]]


def hybrid_forward(block: MMRecBlock, x: Tensor, state: MMRecState | None = None) -> tuple[Tensor, MMRecState]:
    """``block(x, state)``, computed with one short loop and scans: same result, same parameters.

    Args:
        block: an :class:`MMRecBlock` (its parameters are used as they are).
        x: ``(b, n, d)``.
        state: as for ``block(x, state)``; None starts from ``block.init_state``.

    Returns:
        ``(y (b, n, d), state after step n - 1)``, equal to ``block(x, state)``.
    """
    cfg = block.config
    state = block.check_input(x, state)
    b, n, d = x.shape
    step = state.step
    p = block.project(x)  # q, k, v, z, gamma: (b, n, d) each

    # The only loop: h_t = z_t * sigmoid(W_g h_{t-1}) + gamma_t * h_{t-1}.
    h_prev, hs = state.h, []
    for z_t, gamma_t in zip(p.z.unbind(1), p.gamma.unbind(1)):
        h_prev = block.recur(z_t, gamma_t, h_prev)
        hs.append(h_prev)
    h = torch.stack(hs, dim=1)  # (b, n, d)

    # Cumulative decay A_t = gamma_t * A_{t-1}: a linear recurrence with no input, a scan.
    decay = associative_scan(p.gamma, torch.zeros_like(p.gamma), state.decay)  # (b, n, d)

    # Long bank: the write at step t into slot t mod s is (1 - r) * slot + r * (k_t, v_t),
    # a linear recurrence along every s-th step: fold the sequence into rows of s steps.
    s_long, r = cfg.num_long_slots, cfg.long_write_rate
    k_long, v_long = state.memory.get_bank("long")
    rows = -(-n // s_long)  # ceil(n / s_long)
    new_kv = torch.stack([p.k, p.v], dim=2) * r  # (b, n, 2, d)
    new_kv = torch.nn.functional.pad(new_kv, (0, 0, 0, 0, 0, rows * s_long - n))
    new_kv = rearrange(new_kv, "b (m s) two d -> b m s two d", s=s_long)
    start = torch.stack([_virtual_order(k_long, step), _virtual_order(v_long, step)], dim=2)  # (b, s, 2, d)
    keep = torch.full((1, rows, 1, 1, 1), 1.0 - r, dtype=x.dtype, device=x.device)
    written = associative_scan(keep, new_kv, start)  # (b, m, s, 2, d)
    written = rearrange(written, "b m s two d -> b (m s) two d")[:, :n]
    long = _bank_reads(torch.cat([start, written], dim=1), step, n, s_long)  # (b, n+1, s, 2, d)

    # Short bank: slot t mod s is overwritten with h_t, so step t reads h_{t-s} .. h_{t-1}.
    s_short = cfg.num_short_slots
    k_short, v_short = state.memory.get_bank("short")
    short_k = _bank_reads(torch.cat([_virtual_order(k_short, step), h], dim=1), step, n, s_short)
    short_v = _bank_reads(torch.cat([_virtual_order(v_short, step), h], dim=1), step, n, s_short)

    # Read, residual and FFN for all b * n positions at once.
    keys = torch.cat([short_k[:, :n], long[:, :n, :, 0]], dim=2)  # (b, n, s_short + s_long, d)
    values = torch.cat([short_v[:, :n], long[:, :n, :, 1]], dim=2)
    flat = [rearrange(t, "b n d -> (b n) d") for t in (x, p.q, h)]
    y = block.readout(*flat, rearrange(keys, "b n s d -> (b n) s d"), rearrange(values, "b n s d -> (b n) s d"))

    memory = state.memory.with_banks({"short": (short_k[:, n], short_v[:, n]),
                                      "long": (long[:, n, :, 0], long[:, n, :, 1])}, steps=n)
    final = MMRecState(h=h[:, -1], decay=decay[:, -1], memory=memory, step=step + n)
    return rearrange(y, "(b n) d -> b n d", b=b), final


class HybridMMRecBlock(MMRecBlock):
    """An :class:`MMRecBlock` whose ``forward`` is :func:`hybrid_forward`.

    Same parameters and state dict: ``HybridMMRecBlock(cfg).load_state_dict(block.state_dict())``
    gives a block with the same outputs (``step`` and the other parts are inherited).
    """

    def forward(self, x: Tensor, state: MMRecState | None = None) -> tuple[Tensor, MMRecState]:
        """``x (b, n, d)`` -> ``(y (b, n, d), state)``; see :func:`hybrid_forward`."""
        return hybrid_forward(self, x, state)


__all__ = ["hybrid_forward", "HybridMMRecBlock"]
