"""MAL (eqs. 29-31): a token loop reference with the persistent tokens first, causality, streaming in any
pieces == one call, gradients, errors."""

import pytest
import torch
from torch.testing import assert_close

from mac_minimal.mag import MAGLayerConfig
from mac_minimal.mal import MALConfig, MALLayer, MALLayerConfig, MALLayerState, MALTransformer
from mac_minimal.neural_memory import NeuralMemoryConfig

from conv_taps import random_taps

DT = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-10)
B, D, V, W, P = 2, 16, 16, 4, 2
CUTS = [[0, 3, 8, 9, 16], list(range(17)), [0, 16]]     # 3 + 5 + 1 + 7, token by token, one call


def make_layer(chunk_size: int = 3, num_persistent: int = P, seed: int = 0) -> MALLayer:
    torch.manual_seed(seed)
    cfg = MALLayerConfig(dim=D, heads=2, num_persistent=num_persistent, window=W,
                         memory=NeuralMemoryConfig(chunk_size=chunk_size, max_lr=0.1))
    return MALLayer(cfg).to(DT)


def make(seed: int = 0, conv_size: int = 0) -> MALTransformer:
    """``conv_size``: the memory's convolution, its taps random (not the identity it starts as)."""
    torch.manual_seed(seed)
    cfg = MALConfig(vocab_size=V, dim=D, depth=2, heads=2, num_persistent=P, window=W,
                    memory=NeuralMemoryConfig(chunk_size=3, max_lr=0.1, conv_size=conv_size))
    return random_taps(MALTransformer(cfg).to(DT))


def inputs(n: int = 16, seed: int = 1, b: int = B) -> torch.Tensor:
    return torch.randn(b, n, D, dtype=DT, generator=torch.Generator().manual_seed(seed))


def tokens(n: int = 16, b: int = B, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk_size", [1, 3, 4])
@pytest.mark.parametrize("num_persistent", [0, 2, 5])
def test_layer_equals_its_equations_token_by_token(chunk_size, num_persistent):
    """Eqs. (29)-(31) read literally: x~ = [p || x]; for every token of x~ the memory reads M_{t-1}(q_t),
    then the token loop writes it; one sliding-window attention over all of y = M(x~), outputs of x kept."""
    layer = make_layer(chunk_size, num_persistent)
    x = inputs()
    o, state = layer(x)
    x_tilde = torch.cat((layer.persistent.tokens.expand(B, -1, -1), x), dim=1)                   # (29)
    memory, y = layer.memory.init_state(B), []
    for t in range(x_tilde.shape[1]):                                                          # (30)
        y.append(layer.memory.read(x_tilde[:, t:t + 1], memory))
        memory = layer.memory.write_sequential(x_tilde[:, t:t + 1], memory)
    expected, _ = layer.attention(torch.cat(y, dim=1))                                         # (31), positions 0 ..
    assert_close(o, expected[:, num_persistent:], **TIGHT)
    assert state.attention.position == num_persistent + 16
    assert state.memory.offset == (num_persistent + 16) % chunk_size


def test_the_persistent_outputs_start_the_window():
    layer = make_layer(num_persistent=P)
    state = layer.init_state(B)
    assert state.attention.position == P and state.attention.keys.shape[2] == min(P, W - 1)
    assert state.memory.offset == P % 3


@pytest.mark.parametrize("cuts", CUTS)
def test_layer_streams_exactly(cuts):
    layer = make_layer()
    x = inputs()
    whole, end = layer(x)
    state, pieces = None, []
    for a, b in zip(cuts, cuts[1:]):
        o, state = layer(x[:, a:b], state)
        pieces.append(o)
    assert_close(torch.cat(pieces, dim=1), whole, **TIGHT)
    more = inputs(5, seed=4)
    assert_close(layer(more, state)[0], layer(more, end)[0], **TIGHT)


def test_the_read_at_t_does_not_see_token_t():
    """Change x_t after its query is taken: with one layer, o_t moves only through M_{t-1}(q_t) and the
    attention of M(x~)_{<=t}, so replacing the memory's keys, values and rates of x_t changes o_{t+1}, not o_t."""
    layer = make_layer()
    x, t = inputs(8), 5
    memory = layer.memory
    keys_values, rates = memory.keys_values, memory.rates
    start = layer.init_state(B)                       # the persistent tokens written as they are
    o, _ = layer(x, start)

    def without_token_t(fn):                          # x_t's write made from another token
        other = inputs(8, seed=9)
        return lambda z, *rest: tuple(torch.cat((a[:, :t], b[:, t:t + 1], a[:, t + 1:]), dim=1)
                                      for a, b in zip(fn(z, *rest), fn(other, *rest)))

    memory.keys_values, memory.rates = without_token_t(keys_values), without_token_t(rates)
    try:
        o2, _ = layer(x, start)
    finally:
        del memory.keys_values, memory.rates
    assert_close(o2[:, :t + 1], o[:, :t + 1], **TIGHT)
    assert not torch.allclose(o2[:, t + 1], o[:, t + 1])


@pytest.mark.parametrize("conv_size", [0, 3])
def test_causal_at_every_position(conv_size):
    model = make(conv_size=conv_size)
    t = tokens()
    logits, _ = model(t)
    gen = torch.Generator().manual_seed(2)
    for j in range(t.shape[1] - 1):
        t2 = t.clone()
        t2[:, j + 1:] = (t[:, j + 1:] + torch.randint(1, V, t[:, j + 1:].shape, generator=gen)) % V
        logits2, _ = model(t2)
        assert torch.equal(logits2[:, :j + 1], logits[:, :j + 1]), f"position {j} sees the future"
        assert not torch.equal(logits2[:, j + 1:], logits[:, j + 1:])


@pytest.mark.parametrize("conv_size", [0, 3])
@pytest.mark.parametrize("cuts", CUTS)
def test_model_streams_exactly(cuts, conv_size):
    model = make(conv_size=conv_size)
    t = tokens()
    whole, end = model(t)
    state, pieces = None, []
    for a, b in zip(cuts, cuts[1:]):
        logits, state = model(t[:, a:b], state)
        pieces.append(logits)
        assert state.position == b
    assert_close(torch.cat(pieces, dim=1), whole, **TIGHT)
    more = tokens(6, seed=3)
    assert_close(model(more, state)[0], model(more, end)[0], **TIGHT)


def test_every_parameter_gets_a_gradient():
    model = make()
    logits, _ = model(tokens(10))
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_errors():
    layer, model = make_layer(), make()
    with pytest.raises(ValueError, match=r"x must have shape \(b, n >= 1, d=16\), got \(2, 3, 8\)"):
        layer(torch.zeros(2, 3, 8, dtype=DT))
    with pytest.raises(ValueError, match=r"x has batch size 1 but the state holds 2"):
        layer(inputs(3, b=1), layer.init_state(B))
    with pytest.raises(TypeError, match=r"MALLayerState or None, got tuple"):
        layer(inputs(3), (None, None))
    with pytest.raises(TypeError, match=r"config must be a MALLayerConfig, got MAGLayerConfig"):
        MALLayer(MAGLayerConfig())
    _, state = model(tokens(3))
    with pytest.raises(ValueError, match=r"tokens have batch size 1 but the state was built for batch size 2"):
        model(tokens(3, b=1), state)
    with pytest.raises(ValueError, match=r"MALConfig.window must be an int >= 1, got -2"):
        MALConfig(window=-2)
    with pytest.raises(ValueError, match=r"MALConfig.vocab_size must be an int >= 1, got 0"):
        MALConfig(vocab_size=0)
    assert isinstance(layer.init_state(B), MALLayerState) and MALTransformer().config == MALConfig()
