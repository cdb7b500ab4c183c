"""Tests for mac_minimal.dual_form: the dual form equals the materialised chunk-parallel write.

Every check is in float64 against chapter 4's reference (``torch.func`` gradients, per-token weights
built by the associative scan), values and gradients with respect to the input and every slow
parameter, for chunk sizes 1, 3 and 4 (10 and 11 tokens: not multiples), whole and in pieces.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mac_minimal.dual_form import (
    apply_weights,
    chunk_coefficients,
    decay_matrix,
    dual_chunk,
    gelu_derivative,
    mlp_gradient_factors,
)
from mac_minimal.neural_memory import (
    NeuralMemory,
    NeuralMemoryConfig,
    NeuralMemoryState,
    clip_gradients,
    token_gradients,
)
from mac_minimal.scan import scan_sequential
from mac_minimal.scan_kernel import associative_scan

from gradients import assert_same_values_and_gradients, probe_gradients

DIM = 6


def make(chunk_size: int, seed: int = 0) -> NeuralMemory:
    torch.manual_seed(seed)
    return NeuralMemory(NeuralMemoryConfig(dim=DIM, chunk_size=chunk_size)).double()


def tokens(b: int = 2, n: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, n, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def batched_weights(model: NeuralMemory, b: int) -> tuple[torch.Tensor, ...]:
    """M_0 over the batch, made distinct per row and a leaf that requires grad."""
    noise = torch.Generator().manual_seed(5)
    return tuple((p.detach().expand(b, *p.shape) + 0.3 * torch.randn(b, *p.shape, dtype=p.dtype,
                                                                       generator=noise)).requires_grad_()
                 for p in model.initial_weights)


def state_tensors(state: NeuralMemoryState) -> list[torch.Tensor]:
    return list(state.weights) + list(state.momentum) + list(state.chunk_weights)


# ---------------------------------------------------------------- fact 1: gradients by hand
def test_gelu_derivative_is_autograds_and_the_fused_backward():
    a = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(F.gelu(a).sum(), a)
    assert_close(gelu_derivative(a.detach()), expected)
    grad = torch.randn(101, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fused = torch.ops.aten.gelu_backward(grad, a)            # what mlp_gradient_factors uses
    assert_close(fused, grad * gelu_derivative(a))
    assert_close(*(torch.autograd.grad(out.sum(), a)[0] for out in (fused, grad * gelu_derivative(a))))


def test_gradient_factors_equal_torch_func_gradients_and_their_gradients():
    """The outer products rebuild vmap(grad(...))'s per-token gradients, clip scale included,
    and autograd through the hand-written backward equals autograd through torch.func."""
    model, b, n, bound = make(3), 2, 5, 10.0
    weights = batched_weights(model, b)
    k = F.normalize(tokens(b, n, seed=2), dim=-1).requires_grad_()
    v = tokens(b, n, seed=3).requires_grad_()
    factors = mlp_gradient_factors(weights, k, v, bound, 1e-5)
    by_hand = (factors.delta_hidden[..., :, None] * factors.keys[..., None, :],   # (b, n, f, d)
               factors.delta_out[..., :, None] * factors.hidden[..., None, :],   # (b, n, d, f)
               factors.grad_gain, factors.grad_bias)
    reference = token_gradients(weights, k, v)
    for mine, ref in zip(by_hand, reference):
        assert_close(mine, ref)
    clipped = clip_gradients(reference, bound, lead_dims=2)
    for mine, ref in zip(by_hand, clipped):
        assert_close(mine * factors.scale.reshape(b, n, *[1] * (mine.dim() - 2)), ref)
    assert (factors.scale < 1).any() and (factors.scale == 1).any()  # both branches of the clip
    inputs = [k, v, *weights]
    scaled = [g * factors.scale.reshape(b, n, *[1] * (g.dim() - 2)) for g in by_hand]
    for mine, ref in zip(probe_gradients(scaled, inputs), probe_gradients(list(clipped), inputs)):
        assert_close(mine, ref)


# ---------------------------------------------------------------- fact 2: coefficients
@pytest.mark.parametrize("with_zeros", [False, True])
def test_decay_matrix_is_the_scan_on_a_one_hot_basis(with_zeros):
    """Column s of L is the recurrence h_t = a_t h_{t-1} + x_t driven by x = e_s (chapter 3)."""
    a = torch.rand(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if with_zeros:
        a[:, 2] = 0.0  # total forgetting: products across position 2 vanish, no NaN
    basis = torch.eye(7, dtype=torch.float64).expand(3, 7, 7)          # x_t = e_t, (b, t, s)
    by_scan = associative_scan(a[..., None], basis)                    # h_t, (b, t, s)
    assert_close(decay_matrix(a), by_scan)
    assert_close(decay_matrix(a), scan_sequential(a[..., None], basis))
    assert torch.isfinite(decay_matrix(a)).all()


def test_coefficients_rebuild_every_tokens_weights():
    """W_t = D_t W_prev + B_t S_prev + sum_s C_ts G_s and the end momentum, against the scans of
    eqs. (13)-(14) on flat weight vectors (the materialised form)."""
    gen = torch.Generator().manual_seed(3)
    b, c, p = 2, 5, 9
    theta, eta, alpha, scale = (torch.rand(b, c, dtype=torch.float64, generator=gen) for _ in range(4))
    grads, w_prev, s_prev = (torch.randn(*shape, dtype=torch.float64, generator=gen)
                             for shape in ((b, c, p), (b, p), (b, p)))
    momentum = associative_scan(eta[..., None], -(theta * scale)[..., None] * grads, s_prev)
    weights = associative_scan((1 - alpha)[..., None], momentum, w_prev)
    coef = chunk_coefficients(theta, eta, alpha, scale)
    rebuilt = (coef.decay[..., None] * w_prev[:, None] + coef.from_momentum[..., None] * s_prev[:, None]
               + coef.mix @ grads)
    assert_close(rebuilt, weights)
    end_momentum = coef.momentum_decay[:, None] * s_prev + (coef.momentum_mix[..., None] * grads).sum(1)
    assert_close(end_momentum, momentum[:, -1])


# ---------------------------------------------------------------- the whole write-and-read
@pytest.mark.parametrize("chunk_size,n", [(1, 6), (3, 10), (4, 10), (4, 11), (16, 11)])
def test_forward_equals_materialized_values_and_gradients(chunk_size, n):
    model = make(chunk_size)
    x = tokens(n=n).requires_grad_()
    y_dual, s_dual = model(x)
    y_ref, s_ref = model.forward_materialized(x)
    assert s_dual.offset == s_ref.offset == n % chunk_size
    assert_same_values_and_gradients([y_dual, *state_tensors(s_dual)], [y_ref, *state_tensors(s_ref)],
                                     [x, *model.parameters()])


@pytest.mark.parametrize("chunk_size", [1, 3, 4])
def test_write_equals_materialized_write(chunk_size):
    model = make(chunk_size)
    x = tokens(n=10)
    dual = model.write(x, model.init_state(2))
    ref = model.write_materialized(x, model.init_state(2))
    assert_same_values_and_gradients(state_tensors(dual), state_tensors(ref), list(model.parameters()))


@pytest.mark.parametrize("chunk_size", [3, 4])
def test_streaming_split_at_every_token_equals_the_reference(chunk_size):
    """Two calls, split at each token in turn (mid-chunk splits included), values and gradients."""
    model = make(chunk_size)
    n = 10
    x = tokens(n=n).requires_grad_()
    y_ref, s_ref = model.forward_materialized(x)
    for cut in range(1, n):
        y1, state = model(x[:, :cut])
        y2, state = model(x[:, cut:], state)
        assert_same_values_and_gradients([torch.cat((y1, y2), dim=1), *state_tensors(state)],
                                         [y_ref, *state_tensors(s_ref)], [x, *model.parameters()])


def test_extreme_rates_total_forgetting_and_no_momentum():
    """alpha = 1 (forget everything) and eta = 0 (no momentum) are exact too, with no NaN."""
    model = make(4)
    x = tokens(n=9)
    k, v = model.keys_values(x)
    theta, eta, alpha = model.rates(x)
    alpha = alpha.detach().clone()
    alpha[:, 2] = 1.0
    eta = eta.detach().clone()
    eta[:, 5] = 0.0
    dual = model.write_kv(k, v, theta, eta, alpha, model.init_state(2))
    ref = model._write_chunks_materialized(k, v, theta, eta, alpha, model.init_state(2))[0]
    for a, b in zip(state_tensors(dual), state_tensors(ref)):
        assert torch.isfinite(a).all()
        assert_close(a, b)


# ---------------------------------------------------------------- what it never builds
class LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any torch op creates inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def largest_tensor(fn) -> int:
    """Elements of the largest tensor created while fn runs: forward and backward."""
    with LargestTensor() as record:
        fn()
    return record.numel


def test_no_tensor_holds_per_token_weights():
    """The materialised form builds (b, c, P) per-token weights; the dual form nothing that large,
    forward or backward (the largest are the state's own weights, b * P)."""
    b, c, d = 2, 16, 8
    model = NeuralMemory(NeuralMemoryConfig(dim=d, chunk_size=c))
    x = torch.randn(b, 32, d)
    per_token = b * c * sum(p.numel() for p in model.initial_weights)   # b * c * P

    def train_step(forward):
        y, state = forward(x)
        (y.sum() + sum(w.sum() for w in state.weights)).backward()

    assert largest_tensor(lambda: train_step(model)) < per_token / 4
    assert largest_tensor(lambda: train_step(model.forward_materialized)) >= per_token


def test_apply_weights_is_x_times_w_transposed_and_keeps_the_gradient_in_the_weights_layout():
    """apply_weights(W, x) equals x @ W^T (values and gradients, float64), and through a chain of dual
    chunks every gradient of the weights and the momentum arrives contiguous, in the tensor's own
    layout (written x @ W^T, autograd hands it back transposed: the layout the weight-sized
    operations of backward would then pay for)."""
    b, c, d, f = 2, 4, 3, 5
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(b, f, d, dtype=torch.float64, generator=gen, requires_grad=True)
    x = torch.randn(b, c, d, dtype=torch.float64, generator=gen, requires_grad=True)
    assert_same_values_and_gradients([apply_weights(w, x)], [x @ w.mT], [w, x])

    model = make(chunk_size=c)
    weights = batched_weights(model, b)
    momentum = tuple(torch.zeros_like(t) + 0 * t for t in weights)   # in the graph, like a written state
    layouts = []
    for chunk in range(3):
        for tensor in (*weights[:2], *momentum[:2]):
            tensor.register_hook(lambda grad: layouts.append((tuple(grad.shape), grad.is_contiguous())))
        k, v, q = (torch.randn(b, c, DIM, dtype=torch.float64, generator=gen) for _ in range(3))
        theta, eta, alpha = (0.1 * torch.rand(b, c, dtype=torch.float64, generator=gen) for _ in range(3))
        weights, momentum, y = dual_chunk(weights, momentum, weights, k, v, theta, eta, alpha, q, 1.0, 1e-5)
        loss = y.square().sum() if chunk == 0 else loss + y.square().sum()
    loss.backward()
    assert len(layouts) == 12 and all(contiguous for _, contiguous in layouts), layouts
