"""Chapter 2: the MM-Rec block, one time step at a time.

Per step ``t`` (the MM-Rec design's list, with the choices of this book where the design is silent):

1. ``xn_t = RMSNorm(x_t)``
2. ``q_t, k_t, v_t, z_t = xn_t W_Q, xn_t W_K, xn_t W_V, xn_t W_Z``
3. decay ``gamma_t = sigmoid(xn_t W_gamma + b_gamma)``, in (0, 1) per feature
4. cumulative decay product ``A_t = gamma_t * A_{t-1}`` (the design: "associative scan for
   the cumulative product"; here a running product, chapter 3 computes it by a scan)
5-6. MDI and the core formula ``h_t = z_t * sigmoid(W_g h_{t-1}) + gamma_t * h_{t-1}``
7. multi-memory attention ``m_t = W_O read(q_t, [short slots | long slots])``
   over the banks as they were *before* step ``t`` is written
8. residual + FFN: ``u_t = x_t + h_t + m_t``, ``y_t = u_t + FFN(RMSNorm(u_t))``
9. write step ``t``: short bank <- ``(h_t, h_t)`` (as in the MM-Rec design), long bank <- ``(k_t, v_t)``

The code is split by what depends on ``h_{t-1}``:

* ``project(x)``: steps 1-3 for the whole sequence at once; none needs ``h_{t-1}``.
* ``recur(z_t, gamma_t, h_prev)``: steps 5-6, the only computation on ``h_{t-1}``.
* ``readout(x_t, q_t, h_t, keys, values)``: steps 7-8, given the memory slots step
  ``t`` may read; works for any number of rows ``B`` (a batch, or batch x positions).
* ``step(x_t, p_t, state)``: the loop body, steps 4-9 for one ``t``.
* ``forward(x, state)``: ``project``, then a plain loop over ``step``.

Shapes: ``b`` batch, ``n`` sequence, ``d`` model dim (``config.dim``), ``s`` memory slots.
Nothing runs at import time.

Names: the weights are named after the MM-Rec design's equations above (``W_q`` is W_Q, ``W_g``
the gate's W_g, ``W_o`` is W_O), so that chapter 2's eq. (2.1) and its cells read them off the
equations. The attention layers of chapters 5 to 7 follow the Titans implementations instead
(``to_q``, ``to_kv``, ``to_out``).
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mac_minimal.checks import require_positive_int
from mac_minimal.layers import FeedForward
from mac_minimal.memory_state import MemoryState, MemoryStateConfig, read_memory


@dataclass
class MMRecConfig:
    """Sizes of an MM-Rec block; ``MMRecBlock(MMRecConfig())`` is a small working block.

    ``gamma_bias_init`` starts the decay near ``sigmoid(2) = 0.88`` so that ``h`` keeps
    its past for a few dozen steps at initialisation (like an LSTM's forget-gate bias).
    """

    dim: int = 32
    num_short_slots: int = 8
    num_long_slots: int = 4
    long_write_rate: float = 0.5
    ffn_mult: int = 4
    gamma_bias_init: float = 2.0

    def __post_init__(self) -> None:
        require_positive_int("ffn_mult", self.ffn_mult)
        _ = self.memory_config  # checks dim, slot counts and long_write_rate

    @property
    def memory_config(self) -> MemoryStateConfig:
        """The banks' sizes: keys are ``h_t`` or ``k_t``, values ``h_t`` or ``v_t``, all of width ``dim``."""
        return MemoryStateConfig(dim=self.dim, v_dim=self.dim, num_short_slots=self.num_short_slots,
                                 num_long_slots=self.num_long_slots, long_write_rate=self.long_write_rate)


class Projections(NamedTuple):
    """Everything MM-Rec computes from ``x`` alone: each ``(b, n, d)``, or ``(b, d)`` at one step."""

    q: Tensor
    k: Tensor
    v: Tensor
    z: Tensor
    gamma: Tensor

    def at(self, t: int) -> "Projections":
        """The projections of step ``t``: each ``(b, n, d) -> (b, d)``."""
        return self._make(p[:, t] for p in self)


@dataclass
class MMRecState:
    """What an MM-Rec block carries from one step (and one call) to the next.

    h: ``(b, d)`` the recurrent hidden ``h_{t-1}``.
    decay: ``(b, d)`` the cumulative decay product ``gamma_0 * ... * gamma_{t-1}``.
    memory: the short-term and long-term banks, holding steps ``< step``.
    step: the number of steps consumed so far (the index of the next step).
    """

    h: Tensor
    decay: Tensor
    memory: MemoryState
    step: int


class MMRecBlock(nn.Module):
    """The MM-Rec block: a gated recurrence plus attention over two memory banks."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.norm = nn.RMSNorm(d)
        self.W_q = nn.Linear(d, d, bias=False)
        self.W_k = nn.Linear(d, d, bias=False)
        self.W_v = nn.Linear(d, d, bias=False)
        self.W_z = nn.Linear(d, d)
        self.W_gamma = nn.Linear(d, d)
        nn.init.constant_(self.W_gamma.bias, config.gamma_bias_init)
        self.W_g = nn.Linear(d, d)
        self.W_o = nn.Linear(d, d, bias=False)
        self.ffn_norm = nn.RMSNorm(d)
        self.ffn = FeedForward(d, config.ffn_mult * d)

    def init_state(self, batch_size: int, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> MMRecState:
        """The state before the first step: ``h_{-1} = 0``, an empty product (ones), empty memory banks,
        step 0."""
        d = self.config.dim
        return MMRecState(h=torch.zeros(batch_size, d, dtype=dtype, device=device),
                          decay=torch.ones(batch_size, d, dtype=dtype, device=device),
                          memory=MemoryState(self.config.memory_config, batch_size, dtype=dtype, device=device),
                          step=0)

    def project(self, x: Tensor) -> Projections:
        """Steps 1-3 for every position at once: ``x (b, n, d)`` -> ``q, k, v, z, gamma``, each ``(b, n, d)``."""
        xn = self.norm(x)
        return Projections(q=self.W_q(xn), k=self.W_k(xn), v=self.W_v(xn), z=self.W_z(xn),
                           gamma=torch.sigmoid(self.W_gamma(xn)))

    def recur(self, z_t: Tensor, gamma_t: Tensor, h_prev: Tensor) -> Tensor:
        """MDI, the core formula (eq. 2.1 of chapter 2); all shapes ``(b, d)``.

        ``h_t = z_t * sigmoid(W_g h_{t-1}) + gamma_t * h_{t-1}``
        """
        return z_t * torch.sigmoid(self.W_g(h_prev)) + gamma_t * h_prev

    def readout(self, x_t: Tensor, q_t: Tensor, h_t: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """Steps 7-8: multi-memory attention, residual and FFN.

        ``x_t, q_t, h_t``: ``(B, d)``; ``keys, values``: ``(B, s, d)``, the memory slots step
        ``t`` reads. Returns ``y_t`` ``(B, d)``.
        """
        read, _ = read_memory(q_t[:, None], keys, values)  # (B, 1, d): one query per row
        u = x_t + h_t + self.W_o(read[:, 0])
        return u + self.ffn(self.ffn_norm(u))

    def step(self, x_t: Tensor, p_t: Projections, state: MMRecState) -> tuple[Tensor, MMRecState]:
        """One time step (steps 4-9): ``x_t (b, d)``, ``p_t`` from ``project(x).at(t)``.

        Returns ``y_t (b, d)`` and a new state; ``state`` itself is left unchanged.
        """
        h_t = self.recur(p_t.z, p_t.gamma, state.h)
        keys, values = state.memory.slots()  # (b, s_short + s_long, d): steps < t
        y_t = self.readout(x_t, p_t.q, h_t, keys, values)
        memory = state.memory.copy()
        memory.update_state_sequential("short", h_t[:, None], h_t[:, None], state.step)
        memory.update_state_sequential("long", p_t.k[:, None], p_t.v[:, None], state.step)
        return y_t, MMRecState(h=h_t, decay=state.decay * p_t.gamma, memory=memory, step=state.step + 1)

    def check_input(self, x: Tensor, state: MMRecState | None) -> MMRecState:
        """Check ``x`` is ``(b, n >= 1, dim)`` and matches ``state``; return the state (fresh if None)."""
        d = self.config.dim
        if x.dim() != 3 or x.shape[-1] != d:
            raise ValueError(f"x must have shape (batch, seq, dim={d}), got {tuple(x.shape)}")
        b, n, _ = x.shape
        if n < 1:
            raise ValueError(f"x must have at least one step, got shape {tuple(x.shape)}")
        if state is None:
            return self.init_state(b, dtype=x.dtype, device=x.device)
        if state.h.shape != (b, d):
            raise ValueError(f"state.h must have shape (batch={b}, dim={d}) to match x, got {tuple(state.h.shape)}")
        return state

    def forward(self, x: Tensor, state: MMRecState | None = None) -> tuple[Tensor, MMRecState]:
        """Run a sequence: ``x (b, n, d)`` -> ``(y (b, n, d), state after step n-1)``.

        Passing the returned state to the next call continues the sequence exactly.
        """
        state = self.check_input(x, state)
        proj = self.project(x)
        ys = []
        for t in range(x.shape[1]):
            y_t, state = self.step(x[:, t], proj.at(t), state)
            ys.append(y_t)
        return torch.stack(ys, dim=1), state  # (b, n, d)
