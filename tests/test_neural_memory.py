"""Tests for mac_minimal.neural_memory: the Titans long-term memory (arXiv 2501.00663 v1, eqs. 8-18)."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap
from torch.testing import assert_close

from mac_minimal.neural_memory import (
    NeuralMemory,
    NeuralMemoryConfig,
    NeuralMemoryState,
    associative_loss,
    clip_gradients,
    memory_mlp,
    recompute_writes,
    token_gradients,
)

from conv_taps import random_taps
from gradients import assert_same_values_and_gradients

DIM = 6


def make(chunk_size: int = 3, seed: int = 0, **kwargs) -> NeuralMemory:
    torch.manual_seed(seed)
    return NeuralMemory(NeuralMemoryConfig(dim=DIM, chunk_size=chunk_size, **kwargs)).double()


def tokens(b: int = 2, n: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, n, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def assert_states_close(s1: NeuralMemoryState, s2: NeuralMemoryState) -> None:
    assert s1.offset == s2.offset
    for field in ("weights", "momentum", "chunk_weights"):
        for a, b in zip(getattr(s1, field), getattr(s2, field)):
            assert_close(a, b)


def state_summary(state: NeuralMemoryState) -> torch.Tensor:
    """A scalar that depends on every tensor of the state, for gradient checks."""
    return sum((w.sin().sum() + 0.5 * s.cos().sum() + 0.25 * c.sum())
               for w, s, c in zip(state.weights, state.momentum, state.chunk_weights))


# ---------------------------------------------------------------- the MLP and its gradient
def test_memory_mlp_is_residual_layer_norm_mlp():
    model = make()
    w1, w2, gain, bias = (p.detach() for p in model.initial_weights)
    x = tokens(n=4)
    expected = x + F.layer_norm(F.gelu(x @ w1.T) @ w2.T, (DIM,), gain, bias, 1e-5)
    assert_close(memory_mlp(model.initial_weights, x), expected)


def test_token_gradients_match_autograd_per_token_with_second_order():
    """vmap(grad) at shared weights == a loop of torch.autograd.grad, and so are their own
    gradients (this catches F.layer_norm's wrong batched double backward, pytorch/functorch#534)."""
    model = make()
    b, n = 2, 4
    weights = tuple(p.detach().expand(b, *p.shape).clone().requires_grad_() for p in model.initial_weights)
    k = F.normalize(tokens(b, n, seed=2), dim=-1).requires_grad_()
    v = tokens(b, n, seed=3).requires_grad_()
    fast = token_gradients(weights, k, v)
    per_token = [[torch.autograd.grad(associative_loss(tuple(w[i] for w in weights), k[i, t], v[i, t]),
                                      weights, create_graph=True) for t in range(n)] for i in range(b)]
    # grads w.r.t. the batched weights are zero outside row i: keep row i, stack (b, n, *shape)
    slow = [torch.stack([torch.stack([per_token[i][t][j][i] for t in range(n)]) for i in range(b)])
            for j in range(4)]
    for f, s in zip(fast, slow):
        assert f.shape == s.shape
        assert_close(f, s)
    probe = [torch.randn(f.shape, dtype=f.dtype, generator=torch.Generator().manual_seed(j)) for j, f in enumerate(fast)]
    inputs = (k, v) + weights
    g_fast = torch.autograd.grad(sum((f * p).sum() for f, p in zip(fast, probe)), inputs)
    g_slow = torch.autograd.grad(sum((s * p).sum() for s, p in zip(slow, probe)), inputs)
    for a, c in zip(g_fast, g_slow):
        assert_close(a, c)


def test_clip_gradients_bounds_the_norm_and_keeps_small_ones():
    big = (torch.full((2, 3, 4), 10.0, dtype=torch.float64), torch.full((2, 3), 10.0, dtype=torch.float64))
    small = tuple(g * 1e-3 for g in big)
    clipped = clip_gradients(big, 1.5, lead_dims=1)
    norms = sum(g.pow(2).flatten(1).sum(-1) for g in clipped).sqrt()
    assert_close(norms, torch.full((2,), 1.5, dtype=torch.float64))
    for a, c in zip(clip_gradients(small, 1.5, lead_dims=1), small):
        assert_close(a, c)
    zero = torch.zeros(2, 5, dtype=torch.float64, requires_grad=True)
    (grad_zero,) = torch.autograd.grad(clip_gradients((zero,), 1.0, lead_dims=1)[0].sum(), zero)
    assert torch.isfinite(grad_zero).all()


# ---------------------------------------------------------------- parallel == sequential
@pytest.mark.parametrize("chunk_size", [1, 3, 4])
def test_write_equals_write_sequential_values_and_gradients(chunk_size):
    model = make(chunk_size)
    x = tokens(n=10)  # not a multiple of 3 or 4
    fast = model.write(x, model.init_state(2))
    slow = model.write_sequential(x, model.init_state(2))
    assert fast.offset == 10 % chunk_size
    assert_states_close(fast, slow)
    assert_same_values_and_gradients([state_summary(fast)], [state_summary(slow)], list(model.parameters()))


@pytest.mark.parametrize("chunk_size,n", [(1, 5), (3, 7), (4, 9)])
def test_forward_equals_forward_sequential_values_and_gradients(chunk_size, n):
    model = make(chunk_size)
    x = tokens(n=n)
    y_fast, s_fast = model(x)
    y_slow, s_slow = model.forward_sequential(x)
    assert y_fast.shape == (2, n, DIM)
    assert_states_close(s_fast, s_slow)
    assert_same_values_and_gradients([y_fast], [y_slow], list(model.parameters()))


def test_chunk_size_one_is_the_plain_token_rule():
    """eqs. (9)-(14) with every gradient at the weights just before the token."""
    model = make(chunk_size=1)
    x = tokens(b=1, n=5)
    k, v = model.keys_values(x)
    theta, eta, alpha = model.rates(x)
    weights = [p.detach() for p in model.initial_weights]
    momentum = [torch.zeros_like(w) for w in weights]
    for t in range(5):
        w_req = [w.clone().requires_grad_() for w in weights]
        g = torch.autograd.grad(associative_loss(w_req, k[0, t], v[0, t]), w_req)
        norm = torch.sqrt(sum(gi.pow(2).sum() for gi in g))
        g = [gi * min(1.0, model.config.grad_bound / norm.item()) for gi in g]
        momentum = [eta[0, t] * s - theta[0, t] * gi for s, gi in zip(momentum, g)]
        weights = [(1 - alpha[0, t]) * w + s for w, s in zip(weights, momentum)]
    state = model.write(x, model.init_state(1))
    for a, b in zip(state.weights, weights):
        assert_close(a[0], b)


# ---------------------------------------------------------------- state carried across calls
@pytest.mark.parametrize("cuts", [[1], [2], [3], [5], [1, 2], [4, 5, 8], list(range(1, 10))])
def test_forward_in_pieces_equals_one_forward(cuts):
    model = make(chunk_size=3)
    x = tokens(n=10)
    y_whole, s_whole = model(x)
    state, outputs = model.init_state(2), []
    for lo, hi in zip([0] + cuts, cuts + [10]):
        y, state = model(x[:, lo:hi], state)
        outputs.append(y)
    assert_close(torch.cat(outputs, 1), y_whole)
    assert_states_close(state, s_whole)


def test_write_in_pieces_equals_one_write_both_forms():
    model = make(chunk_size=4)
    x = tokens(n=11)
    whole = model.write(x, model.init_state(2))
    for write in (model.write, model.write_sequential):
        state = model.init_state(2)
        for lo, hi in [(0, 1), (1, 6), (6, 7), (7, 11)]:
            state = write(x[:, lo:hi], state)
        assert_states_close(state, whole)


def test_state_fields_and_offset():
    model = make(chunk_size=4)
    state = model.init_state(3)
    assert isinstance(state, NeuralMemoryState) and state.offset == 0
    f = model.config.expansion * DIM
    assert [tuple(w.shape) for w in state.weights] == [(3, f, DIM), (3, DIM, f), (3, DIM), (3, DIM)]
    assert all(torch.count_nonzero(s) == 0 for s in state.momentum)
    state = model.write(tokens(b=3, n=6), state)
    assert state.offset == 2
    mid = model.write(tokens(b=3, n=2), model.init_state(3))  # a fresh memory 2 tokens in
    assert mid.offset == 2
    assert_close(mid.chunk_weights[0], model.init_state(3).weights[0])
    done = model.write(tokens(b=3, n=8), model.init_state(3))
    assert done.offset == 0
    for a, b in zip(done.chunk_weights, done.weights):
        assert a is b


# ---------------------------------------------------------------- read and causality
def test_read_uses_one_memory_for_every_token_and_matches_forward_at_last_token():
    model = make(chunk_size=3)
    x = tokens(n=7)
    y, state = model(x)
    q = model.queries(x)
    read = model.read(x, state)
    expected = torch.stack([memory_mlp(tuple(w[i] for w in state.weights), q[i]) for i in range(2)])
    assert_close(read, expected)
    assert_close(read[:, -1], y[:, -1])  # y_n = M_n(q_n)
    assert not torch.allclose(read[:, 0], y[:, 0])  # token 0 of forward read M_0+, not M_n


@pytest.mark.parametrize("j", [0, 2, 3, 6])
def test_forward_is_causal_exactly(j):
    model = make(chunk_size=4)
    x = tokens(n=9)
    x2 = x.clone()
    x2[:, j + 1:] = torch.randn_like(x2[:, j + 1:]) * 3
    y1, _ = model(x)
    y2, _ = model(x2)
    assert torch.equal(y1[:, :j + 1], y2[:, :j + 1])
    assert not torch.allclose(y1[:, j + 1:], y2[:, j + 1:])


def test_batch_rows_are_independent_memories():
    model = make(chunk_size=3)
    x = tokens(b=3, n=7)
    y, _ = model(x)
    y1, _ = model(x[1:2])
    assert_close(y[1:2], y1)


# ---------------------------------------------------------------- the memory learns
def test_memory_memorises_pairs_at_test_time():
    torch.manual_seed(0)
    d, n = 16, 8
    model = NeuralMemory(NeuralMemoryConfig(dim=d, chunk_size=1, grad_bound=3.0))
    k = F.normalize(torch.randn(1, n, d), dim=-1)
    v = torch.randn(1, n, d) / d**0.5
    ones = torch.ones(1, n)

    def recall_error(state):
        y = vmap(memory_mlp)(state.weights, k)
        return ((y - v).pow(2).sum(-1).mean() / v.pow(2).sum(-1).mean()).item()

    state = model.init_state(1)
    before = recall_error(state)
    with torch.no_grad():
        for _ in range(20):
            state = model.write_kv_sequential(k, v, 0.05 * ones, 0 * ones, 0 * ones, state)
    assert before > 1.0
    assert recall_error(state) < 0.1 * before


def test_gradients_reach_initial_weights_and_rates():
    model = make(chunk_size=2)
    y, _ = model(tokens(n=5))
    y.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- mixed precision
def test_memory_runs_in_its_parameters_dtype_under_bf16_autocast():
    """Autocast is switched off inside the memory: bf16 inputs are cast up, and the result is the
    full-precision one, for float32 and float64 memories alike (the dtype is never forced)."""
    for dtype in (torch.float32, torch.float64):
        model = make(chunk_size=2).to(dtype)
        x = tokens(n=5).to(dtype)
        expected, expected_state = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, state = model(x)
            read = model.read(x.bfloat16(), state)
            written = model.write(x.bfloat16(), model.init_state(2))
        assert y.dtype == read.dtype == written.weights[0].dtype == dtype
        assert_close(y, expected, rtol=0, atol=0)
        assert_states_close(state, expected_state)
        assert_close(read, model.read(x.bfloat16().to(dtype), state))


# ---------------------------------------------------------------- long streams stay finite
def test_forward_on_16k_tokens_is_finite_with_gradients():
    torch.manual_seed(0)
    model = NeuralMemory(NeuralMemoryConfig(dim=8, chunk_size=1024))
    x = 10 * torch.randn(1, 16384, 8)
    y, state = model(x)
    y.square().mean().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(w).all() for w in state.weights)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------- exercises
def test_exercise_one_chunk_no_momentum_no_decay_is_one_gradient_step():
    """One chunk, eta = alpha = 0, no clipping: the write is one step of (full-batch)
    gradient descent on the summed loss at M_0, eq. (16)."""
    model = make(chunk_size=6, grad_bound=1e6)
    k = F.normalize(tokens(b=1, n=6, seed=4), dim=-1)
    v = tokens(b=1, n=6, seed=5)
    theta, zeros = torch.full((1, 6), 0.01, dtype=torch.float64), torch.zeros(1, 6, dtype=torch.float64)
    state = model.write_kv(k, v, theta, zeros, zeros, model.init_state(1))
    w0 = [p.detach().clone().requires_grad_() for p in model.initial_weights]
    total = sum(associative_loss(w0, k[0, t], v[0, t]) for t in range(6))
    step = [w - 0.01 * g for w, g in zip(w0, torch.autograd.grad(total, w0))]
    for a, b in zip(state.weights, step):
        assert_close(a[0], b)


def test_exercise_forgetting_alone_shrinks_weights_geometrically():
    model = make(chunk_size=4)
    k = F.normalize(tokens(b=1, n=7), dim=-1)
    zeros = torch.zeros(1, 7, dtype=torch.float64)
    state = model.write_kv(k, k, zeros, zeros, torch.full((1, 7), 0.1, dtype=torch.float64), model.init_state(1))
    for a, w0 in zip(state.weights, model.initial_weights):
        assert_close(a[0], 0.9**7 * w0)
    # all forgotten (alpha = 1): the weights are zero and the memory is the identity, M(q) = q
    ones = torch.ones(1, 1, dtype=torch.float64)
    gone = model.write_kv(k[:, :1], k[:, :1], 0 * ones, 0 * ones, ones, state)
    x = tokens(b=1, n=3)
    assert_close(model.read(x, gone), model.queries(x))


def test_exercise_momentum_carries_one_surprise_forward():
    """A single write at t = 0 keeps moving the weights: after n tokens the total step is
    theta g (1 - eta^n) / (1 - eta)."""
    model = make(chunk_size=1, grad_bound=1e6)
    n, eta_value = 8, 0.7
    k = F.normalize(tokens(b=1, n=n), dim=-1)
    v = tokens(b=1, n=n, seed=9)
    theta = torch.zeros(1, n, dtype=torch.float64)
    theta[0, 0] = 0.02
    eta = torch.full((1, n), eta_value, dtype=torch.float64)
    state = model.write_kv(k, v, theta, eta, torch.zeros(1, n, dtype=torch.float64), model.init_state(1))
    w0 = [p.detach().clone().requires_grad_() for p in model.initial_weights]
    g = torch.autograd.grad(associative_loss(w0, k[0, 0], v[0, 0]), w0)
    for a, w, gi in zip(state.weights, w0, g):
        assert_close(a[0], w - 0.02 * gi * (1 - eta_value**n) / (1 - eta_value))


# ---------------------------------------------------------------- clear errors
def test_config_errors():
    with pytest.raises(ValueError, match="chunk_size"):
        NeuralMemoryConfig(chunk_size=0)
    with pytest.raises(ValueError, match="dim"):
        NeuralMemoryConfig(dim=0)
    with pytest.raises(ValueError, match="grad_bound"):
        NeuralMemoryConfig(grad_bound=0.0)
    for bad in (float("inf"), float("nan"), -0.1):
        with pytest.raises(ValueError, match=r"max_lr.*> 0.*" + repr(bad).replace(".", r"\.")):
            NeuralMemoryConfig(max_lr=bad)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"NeuralMemoryConfig\.max_momentum must be >= 0 and <= 1"):
            NeuralMemoryConfig(max_momentum=bad)
    for name in ("theta_logit_init", "alpha_logit_init"):
        with pytest.raises(ValueError, match=rf"NeuralMemoryConfig\.{name} must be any finite number, got nan"):
            NeuralMemoryConfig(**{name: float("nan")})


def test_rates_start_at_their_initial_logits():
    """theta_t = max_lr * sigmoid(theta_logit_init), alpha_t = sigmoid(alpha_logit_init), up to the small
    data-dependent part (weights of norm ~0.1 on unit-scale tokens)."""
    memory = NeuralMemory(NeuralMemoryConfig(dim=DIM, max_lr=0.03, theta_logit_init=-3.0, alpha_logit_init=-7.0))
    assert memory.to_rates.bias.tolist() == [-3.0, 2.0, -7.0]
    theta, eta, alpha = memory.rates(torch.zeros(1, 2, DIM))
    assert_close(theta, torch.full((1, 2), 0.03 * torch.sigmoid(torch.tensor(-3.0)).item()))
    assert_close(alpha, torch.full((1, 2), torch.sigmoid(torch.tensor(-7.0)).item()))


def test_max_momentum_caps_eta_and_only_eta():
    """eta_t = max_momentum * sigmoid(logit): the same linear map, the momentum scaled, the others untouched."""
    torch.manual_seed(0)
    free = NeuralMemory(NeuralMemoryConfig(dim=DIM))
    capped = NeuralMemory(NeuralMemoryConfig(dim=DIM, max_momentum=0.9))
    capped.load_state_dict(free.state_dict())
    x = torch.randn(2, 5, DIM)
    (theta, eta, alpha), (theta_c, eta_c, alpha_c) = free.rates(x), capped.rates(x)
    assert_close(eta_c, 0.9 * eta)
    assert bool((eta_c < 0.9).all()) and torch.equal(theta_c, theta) and torch.equal(alpha_c, alpha)


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_no_momentum_is_a_plain_step_and_both_forms_agree(chunk_size):
    """``max_momentum=0``: eta_t is exactly 0, so S_t = -theta_t grad and M_t = (1 - alpha_t) M_{t-1} + S_t
    (eq. 8 with forgetting); the dual form (whose decay products take no logarithm or division)
    equals the token loop in values and gradients."""
    model = make(chunk_size, max_momentum=0.0)
    x = tokens(n=9)
    assert torch.equal(model.rates(x)[1], torch.zeros(2, 9, dtype=torch.float64))
    y_fast, s_fast = model(x)
    y_slow, s_slow = model.forward_sequential(x)
    assert_states_close(s_fast, s_slow)
    assert_same_values_and_gradients([y_fast, state_summary(s_fast)], [y_slow, state_summary(s_slow)],
                                     list(model.parameters()))


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_matrices_only_write_leaves_gain_and_bias_to_forgetting_and_all_forms_agree(chunk_size):
    """``write_norm=False``: no gradient reaches the layer norm's gain and bias, so their momentum stays
    zero and they are M_0's shrunk by the forgetting alone, prod_t (1 - alpha_t); W1 and W2 are written
    as before. The dual form equals the materialised form and the token loop, values and gradients."""
    model = make(chunk_size, write_norm=False)
    x = tokens(n=9)
    y_fast, s_fast = model(x)
    y_slow, s_slow = model.forward_sequential(x)
    y_mat, s_mat = model.forward_materialized(x)
    assert_states_close(s_fast, s_slow)
    assert_states_close(s_mat, s_slow)
    kept = (1 - model.rates(x)[2]).prod(dim=1)                        # (b,)
    for initial, weight, momentum in zip(model.initial_weights[2:], s_fast.weights[2:], s_fast.momentum[2:]):
        assert torch.equal(momentum, torch.zeros_like(momentum))
        assert_close(weight, kept[:, None] * initial.detach())
    for initial, weight in zip(model.initial_weights[:2], s_fast.weights[:2]):
        assert not torch.allclose(weight, initial.detach().expand_as(weight))
    assert_same_values_and_gradients([y_fast, state_summary(s_fast)], [y_slow, state_summary(s_slow)],
                                     list(model.parameters()))
    assert_same_values_and_gradients([y_mat], [y_slow], list(model.parameters()))
    with pytest.raises(TypeError, match="NeuralMemoryConfig.write_norm must be True or False, got 'no'"):
        NeuralMemoryConfig(write_norm="no")


def test_memory_of_its_own_needs_a_dim():
    """``dim=None`` means 'the MAC layer's width': a config may leave it open, a memory may not."""
    with pytest.raises(ValueError, match="dim") as error:
        NeuralMemory(NeuralMemoryConfig())
    assert "NeuralMemoryConfig.dim" in str(error.value)
    with pytest.raises(ValueError, match="NeuralMemoryConfig.dim"):
        NeuralMemoryConfig(dim=0)


def test_input_errors():
    model = make()
    state = model.init_state(2)
    with pytest.raises(ValueError, match=r"\(batch, seq, dim\)"):
        model(torch.randn(4, DIM, dtype=torch.float64))
    with pytest.raises(ValueError, match=f"dim={DIM}"):
        model.write(torch.randn(2, 3, DIM + 1, dtype=torch.float64), state)
    with pytest.raises(ValueError, match="batch size"):
        model(tokens(b=3, n=4), state)
    with pytest.raises(ValueError, match="batch size"):
        model.read(tokens(b=1, n=4), state)
    with pytest.raises(ValueError, match="seq >= 1"):
        model(tokens(n=0))
    with pytest.raises(ValueError, match="batch_size"):
        model.init_state(0)
    k = tokens(n=4)
    ones = torch.ones(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="theta must have shape"):
        model.write_kv(k, k, ones[:, :3], ones, ones, state)
    with pytest.raises(ValueError, match="v must have"):
        model.write_kv_sequential(k, k[:, :3], ones, ones, ones, state)


# ---------------------------------------------------------------- recomputing the write in backward
def model_with_memory(name: str) -> torch.nn.Module:
    """A tiny float64 MAC, MAG or MAL whose memories have several chunks per call."""
    from mac_minimal.mag import MAGConfig, MAGTransformer
    from mac_minimal.mal import MALConfig, MALTransformer
    from mac_minimal.model import MACConfig, MACTransformer
    torch.manual_seed(0)
    common = dict(vocab_size=11, dim=8, depth=2, heads=2, num_persistent=2, memory=NeuralMemoryConfig(chunk_size=2))
    if name == "mac":
        return MACTransformer(MACConfig(segment_len=6, **common)).double()
    if name == "mag":
        return MAGTransformer(MAGConfig(window=4, **common)).double()
    return MALTransformer(MALConfig(window=4, **common)).double()


@pytest.mark.parametrize("name", ["mac", "mag", "mal"])
def test_recomputed_writes_give_the_same_values_and_gradients(name):
    """Backward with the writes recomputed equals backward with them kept (float64): logits, and the
    gradients of every parameter; the stream in two pieces, the memory carried between them."""
    model = model_with_memory(name)
    x = torch.randint(0, 11, (2, 15), generator=torch.Generator().manual_seed(3))

    def logits() -> torch.Tensor:
        first, state = model(x[:, :7])
        second, _ = model(x[:, 7:], state)
        return torch.cat((first, second), dim=1)

    kept = logits()
    assert recompute_writes(model) is model
    assert all(m.recompute for m in model.modules() if isinstance(m, NeuralMemory))
    recomputed = logits()
    assert_same_values_and_gradients([recomputed], [kept], list(model.parameters()), rtol=1e-12, atol=1e-12)
    recompute_writes(model, on=False)
    assert not any(m.recompute for m in model.modules() if isinstance(m, NeuralMemory))


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward in one forward of ``model``."""
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def test_recomputed_writes_keep_less_for_backward():
    """What recomputing is for: with 3 chunks per segment, backward keeps under half the bytes."""
    model = model_with_memory("mac")
    x = torch.randint(0, 11, (2, 24), generator=torch.Generator().manual_seed(3))
    kept = saved_bytes(model, x)
    recomputed = saved_bytes(recompute_writes(model), x)
    assert recomputed < 0.5 * kept
    with torch.no_grad():                                  # nothing to recompute for: runs as before
        assert_close(model(x)[0], recompute_writes(model, on=False)(x)[0])


def test_recompute_writes_errors():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        recompute_writes("model")
    with pytest.raises(ValueError, match="no NeuralMemory"):
        recompute_writes(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- the short convolution (section 4.4)
def conv_memory(chunk_size: int = 3, conv_size: int = 4, seed: int = 0) -> NeuralMemory:
    """A memory with a convolution whose taps are random (not the identity it starts as)."""
    return random_taps(make(chunk_size, seed=seed, conv_size=conv_size))


def tapped(x: torch.Tensor, projection: torch.nn.Linear, taps: torch.Tensor) -> torch.Tensor:
    """The convolution written out: out_t = sum_j taps[:, K-1-j] * projection(x_{t-j}), zeros before 0."""
    p, conv_size = projection(x), taps.shape[1]
    rows = []
    for t in range(x.shape[1]):
        rows.append(sum(taps[:, conv_size - 1 - j] * p[:, t - j] for j in range(conv_size) if t - j >= 0))
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("chunk_size", [1, 3, 4])
def test_conv_memory_equals_its_taps_written_out_and_the_token_loop_with_gradients(chunk_size):
    model, x = conv_memory(chunk_size), tokens(n=10).requires_grad_()
    y, state = model(x)
    k = F.normalize(F.silu(tapped(x, model.to_k, model.conv_k)), dim=-1)
    v = F.silu(tapped(x, model.to_v, model.conv_v))
    q = F.normalize(F.silu(tapped(x, model.to_q, model.conv_q)), dim=-1)
    theta, eta, alpha = model.rates(x)
    reference, expected = model.init_state(2), []
    for t in range(x.shape[1]):
        reference = model.write_kv_sequential(k[:, t:t + 1], v[:, t:t + 1], theta[:, t:t + 1], eta[:, t:t + 1],
                                              alpha[:, t:t + 1], reference)
        w1, w2, gain, bias = reference.weights
        expected.append(memory_mlp((w1, w2, gain[:, None], bias[:, None]), q[:, t:t + 1]))
    params = [x, model.conv_q, model.conv_k, model.conv_v, model.to_k.weight, model.init_w1]
    assert_same_values_and_gradients([y, state_summary(state)],
                                     [torch.cat(expected, dim=1), state_summary(reference)], params)
    assert_close(state.recent, x[:, -3:])                             # the last K - 1 inputs


@pytest.mark.parametrize("cuts", [[0, 1, 2, 3, 10], [0, 5, 6, 10], [0, 2, 9, 10]])
def test_conv_memory_streamed_in_pieces_equals_one_pass(cuts):
    model, x = conv_memory(), tokens(n=10)
    whole, end = model(x)
    state, pieces = None, []
    for a, b in zip(cuts, cuts[1:]):
        y, state = model(x[:, a:b], state)
        pieces.append(y)
    assert_close(torch.cat(pieces, dim=1), whole)
    assert_states_close(state, end)
    assert_close(state.recent, end.recent)
    first = model.write(x[:, :2], None)                               # a zero before the stream's start
    assert_close(first.recent, torch.cat((torch.zeros_like(x[:, :1]), x[:, :2]), dim=1))
    assert_states_close(model.write(x[:, 2:], first), end)            # write carries what forward does
    assert_close(model.write(x[:, 2:], first).recent, x[:, -3:])


def test_conv_memory_forms_agree():
    """The dual form, the materialised form and the token loop, all with the convolution."""
    model, x = conv_memory(), tokens(n=9)
    y, state = model(x)
    for y2, state2 in (model.forward_materialized(x), model.forward_sequential(x)):
        assert_close(y2, y)
        assert_states_close(state2, state)
    assert_states_close(model.write_sequential(x, None), state)


def test_conv_starts_as_the_identity():
    """With its initial taps a memory with a convolution computes what the same memory without one does."""
    plain, convolved = make(seed=3), make(seed=3, conv_size=4)
    convolved.load_state_dict(plain.state_dict(), strict=False)
    x = tokens(n=7)
    assert_close(convolved(x)[0], plain(x)[0])
    assert [n for n, _ in convolved.named_parameters() if n.startswith("conv")] == ["conv_q", "conv_k", "conv_v"]
    assert plain.init_state(2).recent is None and convolved.init_state(2).recent.shape == (2, 3, DIM)


def test_conv_errors():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="conv_size must be an int >= 0"):
            NeuralMemoryConfig(dim=DIM, conv_size=bad)
    model = conv_memory()
    with pytest.raises(ValueError, match=r"recent must have shape \(batch, conv_size - 1, dim\) = \(2, 3, 6\)"):
        model.read(tokens(n=2), model.init_state(2), recent=tokens(n=2))
