"""The Titans neural long-term memory: an MLP written at test time by gradient descent.

Behrouz, Zhong, Mirrokni 2024 (arXiv 2501.00663 v1). The paper asks for an MLP of L_M >= 1 layers;
this book's memory is the two-layer residual MLP

    M(x) = x + LN(W2 gelu(W1 x))          (TTT-MLP's form, Sun et al. 2024; titans-pytorch's default)

whose weights are *fast weights*: they change while the model reads its input
(:mod:`~mac_minimal.fast_weights` writes M, its loss and its gradients as functions of them).
Writing a token ``x_t`` is one step of gradient descent with momentum and decay
on the associative loss of eq. (12):

    k_t = normalize(silu(x_t W_K)),  v_t = silu(x_t W_V)           (11)
    l(M; x_t) = ||M(k_t) - v_t||^2                                 (12)
    S_t = eta_t S_{t-1} - theta_t grad l(M_{t-1}; x_t)           (10, 14)
    M_t = (1 - alpha_t) M_{t-1} + S_t                              (13)

with each token's gradient clipped to norm ``grad_bound`` (a choice of this book, see chapter 4:
it keeps long streams finite), and reading is a forward pass with no update, ``y_t = M*(q_t)``
(15). The rates ``theta_t`` (step size), ``eta_t`` (momentum) and ``alpha_t`` (forgetting) are
learned functions of the token.

Three forms of the write, equal for every chunk size ``c``:

* ``write_sequential``: the token loop of eqs. (8)-(14), the reference;
* ``write_materialized``: the chunk-parallel form of eqs. (16)-(18): every gradient of a
  chunk is taken at the chunk's first weights, all at once (``torch.func.grad`` +
  ``vmap``), then momentum and forgetting are two linear recurrences solved with
  the associative scan of chapter 3. ``c = 1`` is exactly the token rule;
* ``write``: the same numbers in the dual form (:mod:`~mac_minimal.dual_form`), which
  never builds a token's weights.

**A short convolution** (``conv_size`` K > 0, the paper's section 4.4: "a 1D depthwise-separable
convolution layer after each of the query, key, and value projections"): each projection is mixed
over the last K tokens, channel by channel, before its SiLU, ``k_t = normalize(silu(sum_j w_j *
(x_{t-j} W_K)))``, ``j = 0 .. K-1``, likewise ``v_t`` and ``q_t``; the rates still come from
``x_t`` alone. A key can then hold the token before it, which is how a key token and the value
token after it become one (key, value) pair in a single write. It is causal (zeros before the
stream starts) and carried across calls in the state's ``recent`` inputs; it starts as the
identity (``w_0 = 1``, the rest 0), so a memory with one starts as a memory without.

Shapes: b batch, n sequence, d model width (``dim``), c chunk, f = expansion * d, K conv_size.
"""

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.func import grad, vmap
from torch.utils.checkpoint import checkpoint

from mac_minimal.checks import require_int, require_number, require_positive_int
from mac_minimal.dual_form import dual_chunk
from mac_minimal.fast_weights import (Weights, associative_loss, clip_gradients, flatten_weights, memory_mlp,
                                      token_gradients, unflatten_weights)
from mac_minimal.scan_kernel import associative_scan


@dataclass
class NeuralMemoryConfig:
    """Hyper-parameters of the neural memory.

    dim: model width d (keys, values, queries and the MLP's input/output). None, inside a MAC
        layer (:class:`~mac_minimal.mac_attention.MACAttentionConfig`), means the layer's width.
    chunk_size: c, tokens whose gradients are taken at the same weights (eq. 16).
    expansion: hidden width of the MLP is ``expansion * dim`` (4, as in TTT-MLP and titans-pytorch).
    max_lr: the step size ``theta_t`` lies in (0, max_lr). Default 0.03, what MAC needs to train
        (chapter 8: a smaller step keeps the gradient through the chain of writes tame,
        ``benchmarks/mac_trainability.py``); chapter 4 works with 0.1.
    max_momentum: the momentum ``eta_t`` lies in (0, max_momentum), or is 0 with ``max_momentum=0``
        (no momentum: eq. 8's plain gradient step, with forgetting). Default 1 (the paper's
        sigmoid). A write keeps moving the weights for about ``1 / (1 - eta)`` tokens, so a momentum
        learned near 1 makes what a fact left in the memory grow with the time since it was written;
        0.9 caps that at about 10 tokens, and the read is then the same at distance 100 as at 1,000
        (chapter 8, 'The memory's horizon').
    grad_bound: bound on the norm of each token's gradient (all fast weights together).
    ln_eps: epsilon of the layer norm inside the MLP.
    theta_logit_init: initial bias of the step size's logit, ``theta = max_lr * sigmoid(logit)``;
        0 starts every token's step at ``max_lr / 2``.
    alpha_logit_init: initial bias of the forgetting rate's logit, ``alpha = sigmoid(logit)``.
        -4 (alpha ~ 0.018) forgets a write in about 1 / alpha ~ 55 tokens; -7 (alpha ~ 0.0009)
        keeps it for about 1,100 (chapter 8, 'The memory's horizon').
    write_norm: True (default): a write moves every fast weight, the matrices W1, W2 and the layer
        norm's gain and bias. False: only W1 and W2; the gain and bias keep M_0's values (forgetting
        still shrinks them, like every fast weight). The bias adds the same vector to the read of
        every key, so a memory that writes it can answer a question without matching its key
        (chapter 8, 'Many facts').
    conv_size: K, the width of the causal depthwise convolution over time after each of the q, k,
        v projections (the paper's section 4.4; see the module's docstring); 0 (default): none.
    """

    dim: int | None = None
    chunk_size: int = 8
    expansion: int = 4
    max_lr: float = 0.03
    max_momentum: float = 1.0
    grad_bound: float = 1.0
    ln_eps: float = 1e-5
    theta_logit_init: float = 0.0
    alpha_logit_init: float = -4.0
    write_norm: bool = True
    conv_size: int = 0

    def __post_init__(self) -> None:
        if self.dim is not None:
            require_positive_int("NeuralMemoryConfig.dim", self.dim)
        for name in ("chunk_size", "expansion"):
            require_positive_int(f"NeuralMemoryConfig.{name}", getattr(self, name))
        for name in ("max_lr", "grad_bound", "ln_eps"):
            require_number(f"NeuralMemoryConfig.{name}", getattr(self, name), low=0.0)
        require_number("NeuralMemoryConfig.max_momentum", self.max_momentum, low=0.0, high=1.0, closed=True)
        for name in ("theta_logit_init", "alpha_logit_init"):
            require_number(f"NeuralMemoryConfig.{name}", getattr(self, name))
        if not isinstance(self.write_norm, bool):
            raise TypeError(f"NeuralMemoryConfig.write_norm must be True or False, got {self.write_norm!r}")
        require_int("NeuralMemoryConfig.conv_size", self.conv_size, minimum=0)


class NeuralMemoryState(NamedTuple):
    """What a memory carries from one call to the next (every tensor is per batch element).

    weights: M_t, the fast weights after the last written token, each ``(b, *shape)``.
    momentum: S_t, same shapes (eq. 14).
    chunk_weights: the weights at the start of the current chunk, where the gradients of
        its remaining tokens are taken (eq. 16); equal to ``weights`` when ``offset == 0``.
    offset: tokens written since the current chunk began, ``0 <= offset < chunk_size``.
        Chunk boundaries sit at multiples of ``chunk_size`` from the start of the stream,
        so a write split anywhere equals one write.
    recent: with ``conv_size`` K > 0, the last K - 1 inputs written, ``(b, K - 1, d)`` (zeros before
        the stream's start), which the convolution of the next write reads; None without one.
    """

    weights: Weights
    momentum: Weights
    chunk_weights: Weights
    offset: int
    recent: Tensor | None


def moved_on(recent: Tensor, x: Tensor) -> Tensor:
    """A convolution's window after the inputs x (b, n, d): the last ``recent.shape[1]`` rows of
    ``recent`` (b, K - 1, d) followed by x, contiguous (one compiled graph for every window)."""
    history = torch.cat((recent, x), dim=1)
    return history[:, history.shape[1] - recent.shape[1]:].contiguous()


def _as_rate(rate: Tensor, like: Tensor) -> Tensor:
    """Reshape a rate ``(b,)`` or ``(b, c)`` to broadcast against ``like`` ``(b, [c,] *shape)``."""
    return rate.reshape(*rate.shape, *([1] * (like.dim() - rate.dim())))


def written(grads: Weights, write_norm: bool) -> Weights:
    """The gradients a write applies: all four, or (``write_norm=False``) W1's and W2's with zeros
    for the layer norm's gain and bias (before clipping, so the bound is on what is written)."""
    if write_norm:
        return grads
    g1, g2, g_gain, g_bias = grads
    return g1, g2, torch.zeros_like(g_gain), torch.zeros_like(g_bias)


def chunk_lengths(n: int, chunk_size: int, offset: int) -> list[int]:
    """Lengths of the pieces that cut n tokens at the chunk boundaries, the first token sitting
    ``offset`` tokens into its chunk: ``chunk_lengths(10, 4, 1) == [3, 4, 3]``."""
    first = min(n, chunk_size - offset)
    whole, rest = divmod(n - first, chunk_size)
    return [first] + [chunk_size] * whole + ([rest] if rest else [])


Method = TypeVar("Method", bound=Callable)


def full_precision(method: Method) -> Method:
    """Run a :class:`NeuralMemory` method with autocast off and its floating-point tensor arguments
    cast to the memory's parameter dtype (float32 normally, float64 in the exactness tests).

    Why: the write is gradient descent *inside* the forward pass. Its per-token steps
    ``theta_t * grad`` are small corrections to weights of order one, and bf16 (8 significant bits,
    spacing 2^-7 at 1) would round most of them away, while the associative scan of
    chapter 3 would get bf16 and float32 operands mixed. So under bf16 autocast (the CUDA
    training path) the attention runs in bf16 and the memory in its parameters' precision.
    """
    @functools.wraps(method)
    def wrapper(self: "NeuralMemory", *args: object, **kwargs: object) -> object:
        dtype = self.init_w1.dtype

        def cast(a: object) -> object:
            return a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a

        device_type = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            return method(self, *map(cast, args), **{k: cast(v) for k, v in kwargs.items()})
    return wrapper  # type: ignore[return-value]


class NeuralMemory(nn.Module):
    """Titans neural long-term memory (eqs. 8-18): write by test-time gradient descent, read by M*.

    Learned ("slow") parameters: the projections W_Q, W_K, W_V, the rate map, and the
    INITIAL fast weights M_0 (``init_state`` copies them for every batch element, so gradients
    reach them through every write).
    """

    def __init__(self, config: NeuralMemoryConfig) -> None:
        super().__init__()
        if config.dim is None:
            raise ValueError("NeuralMemoryConfig.dim must be set for a memory of its own "
                             "(None means 'the width of the MAC layer that holds it')")
        self.config = config
        self.recompute = False          # how backward gets the write's intermediates: see recompute_writes
        d, f = config.dim, config.expansion * config.dim
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_k = nn.Linear(d, d, bias=False)
        self.to_v = nn.Linear(d, d, bias=False)
        # one linear map -> logits of (theta, eta, alpha), see `rates`; small weights, so the rates
        # start near theta = max_lr * sigmoid(theta_logit_init), eta = sigmoid(2) ~ 0.88,
        # alpha = sigmoid(alpha_logit_init)
        self.to_rates = nn.Linear(d, 3)
        with torch.no_grad():
            self.to_rates.weight.mul_(0.1)
            self.to_rates.bias.copy_(torch.tensor([config.theta_logit_init, 2.0, config.alpha_logit_init]))
        # M_0: W1 (f, d), W2 (d, f), layer-norm gain and bias (d,). Keys and queries are unit
        # vectors, so W1 ~ N(0, 1) gives unit-variance pre-activations; the gain d^-1/2 gives
        # the LN branch a unit norm, like the residual x.
        self.init_w1 = nn.Parameter(torch.randn(f, d))
        self.init_w2 = nn.Parameter(torch.randn(d, f) / f**0.5)
        self.init_ln_gain = nn.Parameter(torch.full((d,), d**-0.5))
        self.init_ln_bias = nn.Parameter(torch.zeros(d))
        # the short convolution's taps (d, K) per projection, newest last; the identity at the start
        self.conv_q = self.conv_k = self.conv_v = None
        if config.conv_size:
            identity = torch.zeros(d, config.conv_size)
            identity[:, -1] = 1.0
            self.conv_q, self.conv_k, self.conv_v = (nn.Parameter(identity.clone()) for _ in range(3))

    # ---------------------------------------------------------------- inputs
    @property
    def initial_weights(self) -> Weights:
        """M_0 as ``(W1, W2, ln_gain, ln_bias)``, unbatched."""
        return (self.init_w1, self.init_w2, self.init_ln_gain, self.init_ln_bias)

    def init_state(self, batch_size: int) -> NeuralMemoryState:
        """A fresh memory per batch element: a copy of M_0 for each, zero momentum.

        The copies are contiguous (not ``M_0.expand(b, ...)``, stride 0) and the momentum (and the
        convolution's ``recent`` zeros) are computed from them (``0 * M_0``, so they are part of the
        autograd graph, their gradient zero):
        a fresh state is then the same kind of tensors as every memory a write produces, and a
        compiled region (:mod:`~mac_minimal.compiled`) needs one graph for both, not two. The
        copies cost ``b`` times the memory's parameters.
        """
        require_positive_int("batch_size", batch_size)
        weights = tuple(p.expand(batch_size, *p.shape).clone() for p in self.initial_weights)
        momentum = tuple(w * 0 for w in weights)
        recent = None
        if self.config.conv_size:   # zeros, in the autograd graph like the momentum (inputs written later are)
            recent = weights[0].new_zeros(batch_size, self.config.conv_size - 1, self.config.dim)
            recent = recent + 0 * weights[0][:, :1, :1]
        return NeuralMemoryState(weights=weights, momentum=momentum, chunk_weights=weights, offset=0,
                                 recent=recent)

    def _prepare(self, x: Tensor, state: NeuralMemoryState | None = None, name: str = "x") -> NeuralMemoryState:
        """``state``, or a fresh one if None, after checking that x is (batch, seq >= 1, dim) with the
        state's batch size (a ValueError naming what was expected otherwise)."""
        if x.dim() != 3:
            raise ValueError(f"{name} must have shape (batch, seq, dim), got rank {x.dim()} shape {tuple(x.shape)}")
        if x.shape[-1] != self.config.dim:
            raise ValueError(f"{name}'s last dimension must be dim={self.config.dim}, got {x.shape[-1]}")
        if x.shape[1] < 1:
            raise ValueError(f"{name} must hold at least one token (seq >= 1), got shape {tuple(x.shape)}")
        if state is None:
            return self.init_state(x.shape[0])
        if state.weights[0].shape[0] != x.shape[0]:
            raise ValueError(f"{name} has batch size {x.shape[0]} but the state holds "
                             f"{state.weights[0].shape[0]} memories (batch size)")
        return state

    def _check_kv(self, k: Tensor, v: Tensor, rates: tuple[Tensor, ...], state: NeuralMemoryState) -> None:
        """Keys and values (b, n, dim), each rate (b, n)."""
        self._prepare(k, state, name="k")
        if v.shape != k.shape:
            raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
        for name, rate in zip(("theta", "eta", "alpha"), rates):
            if rate.shape != k.shape[:2]:
                raise ValueError(f"{name} must have shape (batch, seq) = {tuple(k.shape[:2])}, got {tuple(rate.shape)}")

    def keys_values(self, x: Tensor, recent: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Eq. (11) with the paper's SiLU and L2-normalised keys: x (b, n, d) -> k, v (b, n, d).

        With ``conv_size`` K > 0 each projection is convolved over the K - 1 ``recent`` inputs
        (b, K - 1, d) before x (zeros if None: the stream's start) and x itself."""
        return (F.normalize(F.silu(self._projected(x, self.to_k, self.conv_k, recent)), dim=-1),
                F.silu(self._projected(x, self.to_v, self.conv_v, recent)))

    def queries(self, x: Tensor, recent: Tensor | None = None) -> Tensor:
        """Eq. (15)'s ``q_t = normalize(silu(x_t W_Q))``: (b, n, d) -> (b, n, d); ``recent`` as in
        :meth:`keys_values`."""
        return F.normalize(F.silu(self._projected(x, self.to_q, self.conv_q, recent)), dim=-1)

    def _projected(self, x: Tensor, projection: nn.Linear, taps: Tensor | None, recent: Tensor | None) -> Tensor:
        """``projection(x)`` (b, n, d), convolved over time with ``taps`` (d, K) if there are any:
        ``out_t = sum_j taps[:, K-1-j] * projection(x_{t-j})``, the K - 1 inputs before x from ``recent``."""
        if taps is None:
            return projection(x)
        if recent is None:
            recent = x.new_zeros(x.shape[0], self.config.conv_size - 1, x.shape[2])
        if recent.shape != (x.shape[0], self.config.conv_size - 1, x.shape[2]):
            raise ValueError(f"recent must have shape (batch, conv_size - 1, dim) = "
                             f"{(x.shape[0], self.config.conv_size - 1, x.shape[2])}, got {tuple(recent.shape)}")
        projected = projection(torch.cat((recent, x), dim=1)).transpose(1, 2)      # (b, d, K - 1 + n)
        return F.conv1d(projected, taps[:, None, :], groups=taps.shape[0]).transpose(1, 2)   # (b, n, d)

    def _advanced(self, state: NeuralMemoryState, x: Tensor) -> NeuralMemoryState:
        """``state`` with ``recent`` moved on past the inputs x (b, n, d): its last K - 1 inputs."""
        return state if state.recent is None else state._replace(recent=moved_on(state.recent, x))

    def rates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Data-dependent rates, each (b, n): step ``theta_t`` in (0, max_lr), momentum
        ``eta_t`` in (0, max_momentum), forgetting ``alpha_t`` in (0, 1) -- sigmoids of one linear map."""
        logits = torch.sigmoid(self.to_rates(x))  # (b, n, 3)
        return (self.config.max_lr * logits[..., 0], self.config.max_momentum * logits[..., 1],
                logits[..., 2])

    # ---------------------------------------------------------------- write
    @full_precision
    def write_kv(self, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                 state: NeuralMemoryState) -> NeuralMemoryState:
        """Chunk-parallel write (eqs. 16-18) of given keys/values (b, n, d) with rates (b, n); no inputs,
        so ``state.recent`` (the convolution's) is passed on as it is."""
        self._check_kv(k, v, (theta, eta, alpha), state)
        return self._write_chunks(k, v, theta, eta, alpha, state)[0]

    def _write_chunks(self, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                      state: NeuralMemoryState, q: Tensor | None = None
                      ) -> tuple[NeuralMemoryState, Tensor | None]:
        """Write chunk by chunk in the dual form; if ``q`` (b, n, d) is given, also read ``M_t(q_t)``.

        Same numbers as :meth:`_write_chunks_materialized`, but per-token weights are never built:
        :func:`~mac_minimal.dual_form.dual_chunk` reads through them (chapter 4, 'The dual form').
        """
        cfg = self.config
        weights, momentum, chunk_weights, offset = state.weights, state.momentum, state.chunk_weights, state.offset
        lengths = chunk_lengths(k.shape[1], cfg.chunk_size, offset)
        # one split per input (not a slice per chunk: a slice's backward writes a full-length gradient)
        pieces = zip(*(t.split(lengths, dim=1) for t in (k, v, theta, eta, alpha)),
                     q.split(lengths, dim=1) if q is not None else [None] * len(lengths))
        outputs = []
        for k_c, v_c, theta_c, eta_c, alpha_c, q_c in pieces:
            weights, momentum, y = dual_chunk(weights, momentum, chunk_weights, k_c, v_c, theta_c, eta_c,
                                              alpha_c, q_c, cfg.grad_bound, cfg.ln_eps, cfg.write_norm)
            outputs.append(y)
            offset = (offset + k_c.shape[1]) % cfg.chunk_size
            if offset == 0:  # a new chunk starts at the weights just reached
                chunk_weights = weights
        y = torch.cat(outputs, dim=1) if q is not None else None
        return NeuralMemoryState(weights=weights, momentum=momentum, chunk_weights=chunk_weights, offset=offset,
                                 recent=state.recent), y

    def _write_chunks_materialized(self, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                                   state: NeuralMemoryState, q: Tensor | None = None
                                   ) -> tuple[NeuralMemoryState, Tensor | None]:
        """Write chunk by chunk; if ``q`` (b, n, d) is given, also read ``y_t = M_t(q_t)``.

        The materialised form, the reference of the dual form. Inside a chunk everything is parallel:
        the gradients at the chunk's first weights (eq. 16), then momentum (eq. 18) and forgetting
        (eq. 13) as linear recurrences ``h_t = a_t h_{t-1} + b_t`` by the associative scan, which
        yields M_t for every token: (b, c, P) numbers per chunk.
        """
        cfg = self.config
        weights, momentum, chunk_weights, offset = state.weights, state.momentum, state.chunk_weights, state.offset
        shapes = [p.shape for p in self.initial_weights]
        # all fast weights as one vector per row, (b, P): two scans per chunk instead of eight
        flat_weights, flat_momentum = flatten_weights(weights, 1), flatten_weights(momentum, 1)
        n, start, outputs = k.shape[1], 0, []
        while start < n:
            end = min(n, start + cfg.chunk_size - offset)  # stop at the next absolute chunk boundary
            grads = written(token_gradients(chunk_weights, k[:, start:end], v[:, start:end], cfg.ln_eps),
                            cfg.write_norm)
            grads = clip_gradients((flatten_weights(grads, 2),), cfg.grad_bound, lead_dims=2)[0]  # (b, c, P)
            theta_c, eta_c, alpha_c = (r[:, start:end, None] for r in (theta, eta, alpha))  # (b, c, 1)
            # eq. (18): S_t = eta_t S_{t-1} - theta_t u_t, for every token of the chunk
            surprise = associative_scan(eta_c, -theta_c * grads, flat_momentum)  # (b, c, P)
            # eq. (13): M_t = (1 - alpha_t) M_{t-1} + S_t
            per_token = associative_scan(1 - alpha_c, surprise, flat_weights)  # (b, c, P)
            if q is not None:
                outputs.append(self._read_per_token(unflatten_weights(per_token, shapes), q[:, start:end]))
            flat_weights, flat_momentum = per_token[:, -1].clone(), surprise[:, -1].clone()
            weights = unflatten_weights(flat_weights, shapes)
            offset = (offset + end - start) % cfg.chunk_size
            if offset == 0:  # a new chunk starts at the weights just reached
                chunk_weights = weights
            start = end
        y = torch.cat(outputs, dim=1) if q is not None else None
        momentum = unflatten_weights(flat_momentum, shapes)
        return NeuralMemoryState(weights=weights, momentum=momentum, chunk_weights=chunk_weights, offset=offset,
                                 recent=state.recent), y

    @full_precision
    def write(self, x: Tensor, state: NeuralMemoryState) -> NeuralMemoryState:
        """Write tokens x (b, n, d) into the memory, chunk-parallel (eqs. 11-18), in the dual form."""
        state = self._prepare(x, state)
        written_state = self._write_chunks(*self.keys_values(x, state.recent), *self.rates(x), state)[0]
        return self._advanced(written_state, x)

    @full_precision
    def write_materialized(self, x: Tensor, state: NeuralMemoryState) -> NeuralMemoryState:
        """Reference of ``write``: the chunk-parallel form that builds every token's weights."""
        state = self._prepare(x, state)
        written_state = self._write_chunks_materialized(*self.keys_values(x, state.recent), *self.rates(x), state)[0]
        return self._advanced(written_state, x)

    @full_precision
    def write_kv_sequential(self, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                            state: NeuralMemoryState) -> NeuralMemoryState:
        """Reference token loop of eqs. (8)-(14) for given keys/values (b, n, d), rates (b, n).

        With ``chunk_size > 1`` each gradient is taken at the weights where the token's
        chunk began, as in eq. (16), so that it equals ``write_kv`` for every chunk size.
        """
        self._check_kv(k, v, (theta, eta, alpha), state)
        cfg = self.config
        weights, momentum, chunk_weights, offset = state.weights, state.momentum, state.chunk_weights, state.offset
        token_grad = vmap(grad(associative_loss), in_dims=(0, 0, 0, None))  # one memory per batch row
        for t in range(k.shape[1]):
            # eq. (12)'s gradient at the weights where this token's chunk began, bounded
            g = clip_gradients(written(token_grad(chunk_weights, k[:, t], v[:, t], cfg.ln_eps), cfg.write_norm),
                               cfg.grad_bound, lead_dims=1)
            theta_t, eta_t, alpha_t = theta[:, t], eta[:, t], alpha[:, t]  # (b,)
            # eq. (14): S_t = eta_t S_{t-1} - theta_t grad l(M_{t'}; x_t)
            momentum = tuple(_as_rate(eta_t, s) * s - _as_rate(theta_t, gi) * gi for s, gi in zip(momentum, g))
            # eq. (13): M_t = (1 - alpha_t) M_{t-1} + S_t
            weights = tuple(_as_rate(1 - alpha_t, w) * w + s for w, s in zip(weights, momentum))
            offset = (offset + 1) % cfg.chunk_size
            if offset == 0:
                chunk_weights = weights
        return NeuralMemoryState(weights=weights, momentum=momentum, chunk_weights=chunk_weights, offset=offset,
                                 recent=state.recent)

    @full_precision
    def write_sequential(self, x: Tensor, state: NeuralMemoryState) -> NeuralMemoryState:
        """Token-by-token reference of ``write``: x (b, n, d)."""
        state = self._prepare(x, state)
        return self._advanced(self.write_kv_sequential(*self.keys_values(x, state.recent), *self.rates(x), state), x)

    # ---------------------------------------------------------------- read
    @full_precision
    def read(self, q_input: Tensor, state: NeuralMemoryState, recent: Tensor | None = None) -> Tensor:
        """Eq. (15): ``y_t = M*(q_t)``, every token reads the same memory ``state.weights``.

        q_input: (b, n, d) -> y: (b, n, d). No update. ``recent``: with ``conv_size`` K > 0, the
        K - 1 inputs of the query stream before q_input (:meth:`queries`; None: its start).
        """
        state = self._prepare(q_input, state, name="q_input")
        w1, w2, gain, bias = state.weights                    # gain, bias (b, d) -> (b, 1, d)
        return memory_mlp((w1, w2, gain[:, None], bias[:, None]), self.queries(q_input, recent), self.config.ln_eps)

    def _read_per_token(self, weights: Weights, q: Tensor) -> Tensor:
        """``y_t = M_t(q_t)`` with per-token weights ``(b, c, *shape)``, q (b, c, d) -> (b, c, d)."""
        b = q.shape[0]
        flat = tuple(rearrange(w, "b c ... -> (b c) ...") for w in weights)
        y = vmap(memory_mlp, in_dims=(0, 0, None))(flat, rearrange(q, "b c d -> (b c) d"), self.config.ln_eps)
        return rearrange(y, "(b c) d -> b c d", b=b)

    # ---------------------------------------------------------------- write + read
    @full_precision
    def forward(self, x: Tensor, state: NeuralMemoryState | None = None) -> tuple[Tensor, NeuralMemoryState]:
        """Write x and read it back causally: ``y_t = M_t(q_t)``, M_t = memory after tokens <= t.

        x: (b, n, d) -> y: (b, n, d), and the state after the last token.
        """
        state = self._prepare(x, state)
        return self.write_and_read(x, self.queries(x, state.recent), state)

    @full_precision
    def write_and_read(self, x: Tensor, queries: Tensor, state: NeuralMemoryState | None = None
                       ) -> tuple[Tensor, NeuralMemoryState]:
        """Write x and read ``y_t = M_t(queries_t)`` with the per-token weights of the chunked write.

        x, queries: (b, n, d) -> y: (b, n, d), and the state after the last token. ``forward`` reads
        with each token's own query; MAG and MAL (chapter 9) with the next token's. With
        ``self.recompute`` (see :func:`recompute_writes`) and gradients on, backward runs this write
        again instead of keeping its intermediates.
        """
        state = self._prepare(x, state)
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(self._write_and_read, x, queries, state, use_reentrant=False)
        return self._write_and_read(x, queries, state)

    def _write_and_read(self, x: Tensor, queries: Tensor, state: NeuralMemoryState
                        ) -> tuple[Tensor, NeuralMemoryState]:
        written_state, y = self._write_chunks(*self.keys_values(x, state.recent), *self.rates(x), state, q=queries)
        return y, self._advanced(written_state, x)

    @full_precision
    def forward_materialized(self, x: Tensor, state: NeuralMemoryState | None = None
                             ) -> tuple[Tensor, NeuralMemoryState]:
        """Reference of ``forward``: chapter 4's chunk-parallel form, every token's weights built."""
        state = self._prepare(x, state)
        written_state, y = self._write_chunks_materialized(*self.keys_values(x, state.recent), *self.rates(x), state,
                                                           q=self.queries(x, state.recent))
        return y, self._advanced(written_state, x)

    @full_precision
    def forward_sequential(self, x: Tensor, state: NeuralMemoryState | None = None
                           ) -> tuple[Tensor, NeuralMemoryState]:
        """Reference of ``forward``: for each token, write it (loop), then read it."""
        state = self._prepare(x, state)
        outputs = []
        for t in range(x.shape[1]):
            before = state.recent                          # the query's window: the inputs before x_t
            state = self.write_sequential(x[:, t:t + 1], state)
            outputs.append(self.read(x[:, t:t + 1], state, recent=before))
        return torch.cat(outputs, dim=1), state


def recompute_writes(model: nn.Module, on: bool = True) -> nn.Module:
    """Make every :class:`NeuralMemory` of ``model`` recompute its writes in backward (``on=False``:
    keep them, the default); returns ``model``.

    A training step keeps, for backward, each chunk's weights and momentum, ``(b, f, d)`` tensors, and
    the activations of every token's gradient: for a long stream far more memory than the model
    without a memory needs. Recomputing keeps only each memory call's inputs (for MAC: one segment's
    attention output and the memory it starts from) and runs that call's write again
    (``torch.utils.checkpoint``) when backward reaches it: the step's memory falls to about what one
    segment's write needs, and its time grows by about one more forward pass of the memory
    (chapter 7 measures both). The numbers are the same. A run-time choice, like compiling: not part
    of the model's config, so checkpoints load either way.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    memories = [module for module in model.modules() if isinstance(module, NeuralMemory)]
    if not memories:
        raise ValueError(f"{type(model).__name__} has no NeuralMemory whose writes could be recomputed")
    for memory in memories:
        memory.recompute = bool(on)
    return model
