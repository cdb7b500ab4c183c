"""MAG (eqs. 26-28): the memory reads before it writes, a token loop reference, causality, streaming in
any pieces == one call, gradients, errors."""

import pytest
import torch
from torch.testing import assert_close

from mac_minimal.compiled import compile_regions
from mac_minimal.layers import num_parameters
from mac_minimal.mag import MAGConfig, MAGLayer, MAGLayerConfig, MAGLayerState, MAGTransformer, read_before_write
from mac_minimal.model import MACConfig
from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryConfig

from conv_taps import random_taps
from gradients import assert_same_values_and_gradients

DT = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-10)
B, D, V, W, P = 2, 16, 16, 4, 2
CUTS = [[0, 3, 8, 9, 16], list(range(17)), [0, 16]]     # 3 + 5 + 1 + 7, token by token, one call


def make_layer(use_memory: bool = True, chunk_size: int = 3, num_persistent: int = P, seed: int = 0) -> MAGLayer:
    torch.manual_seed(seed)
    cfg = MAGLayerConfig(dim=D, heads=2, num_persistent=num_persistent, window=W, use_memory=use_memory,
                         memory=NeuralMemoryConfig(chunk_size=chunk_size, max_lr=0.1))
    return MAGLayer(cfg).to(DT)


def make(use_memory: bool = True, seed: int = 0, conv_size: int = 0) -> MAGTransformer:
    """``conv_size``: the memory's convolution, its taps random (not the identity it starts as)."""
    torch.manual_seed(seed)
    cfg = MAGConfig(vocab_size=V, dim=D, depth=2, heads=2, num_persistent=P, window=W, use_memory=use_memory,
                    memory=NeuralMemoryConfig(chunk_size=3, max_lr=0.1, conv_size=conv_size))
    return random_taps(MAGTransformer(cfg).to(DT))


def inputs(n: int = 16, seed: int = 1, b: int = B) -> torch.Tensor:
    return torch.randn(b, n, D, dtype=DT, generator=torch.Generator().manual_seed(seed))


def tokens(n: int = 16, b: int = B, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


def sequential_read_then_write(memory: NeuralMemory, x: torch.Tensor, state):
    """The convention written as a loop: token t reads M_{t-1}(q_t), then the token loop writes x_t."""
    outputs = []
    for t in range(x.shape[1]):
        outputs.append(memory.read(x[:, t:t + 1], state))
        state = memory.write_sequential(x[:, t:t + 1], state)
    return torch.cat(outputs, dim=1), state


# --- reading before writing ----------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 3, 4])
@pytest.mark.parametrize("written", [0, 2])          # a fresh memory, or one stopped inside a chunk
def test_read_before_write_equals_the_token_loop(chunk_size, written):
    torch.manual_seed(0)
    memory = NeuralMemory(NeuralMemoryConfig(dim=D, chunk_size=chunk_size, max_lr=0.1)).to(DT)
    state = memory.write(inputs(written, seed=3), memory.init_state(B)) if written else memory.init_state(B)
    x = inputs(9).requires_grad_()
    y, end = read_before_write(memory, x, state)
    y_ref, end_ref = sequential_read_then_write(memory, x, state)
    assert end.offset == end_ref.offset == (written + 9) % chunk_size
    assert_same_values_and_gradients([y, *end.weights], [y_ref, *end_ref.weights],
                                     [x, *memory.parameters()], **TIGHT)


def test_the_read_at_t_does_not_see_token_t():
    """m_t depends on x_t only through its query: with the memory's keys, values and rates of x_t
    replaced by those of another token (its write suppressed or altered), m_t is unchanged; m_{t+1} is not."""
    layer = make_layer()
    memory, x, t = layer.memory, inputs(8), 5
    state = memory.init_state(B)
    y, _ = read_before_write(memory, x, state)
    k, v = memory.keys_values(x)
    rates = memory.rates(x)
    other = inputs(8, seed=9)
    k2, v2 = (torch.cat((a[:, :t], b[:, t:t + 1], a[:, t + 1:]), dim=1)            # token t's key, value replaced
              for a, b in zip((k, v), memory.keys_values(other)))
    before = memory.write_kv(k[:, :t], v[:, :t], *(r[:, :t] for r in rates), state)
    assert_close(y[:, t:t + 1], memory.read(x[:, t:t + 1], before), **TIGHT)    # M_{t-1}(q_t): tokens < t only
    altered = memory.write_kv(k2[:, :t + 1], v2[:, :t + 1], *(r[:, :t + 1] for r in rates), state)
    assert not torch.allclose(memory.read(x[:, t + 1:t + 2], altered), y[:, t + 1:t + 2])


# --- the layer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 3])
def test_layer_equals_its_equations_token_by_token(chunk_size):
    """Eqs. (26)-(28) with the memory as a loop: write p, then for every token read M_{t-1}(q_t) and write x_t."""
    layer = make_layer(chunk_size=chunk_size)
    x = inputs()
    o, _ = layer(x)
    memory = layer.memory.write_sequential(layer.persistent.tokens.expand(B, -1, -1), layer.memory.init_state(B))
    m, _ = sequential_read_then_write(layer.memory, x, memory)                                     # M(x~)
    y, _ = layer.attention(x, layer.attention.init_state(B, position=P), prefix=layer.persistent.tokens)  # (27)
    assert_close(o, layer.gate.norm_y(y) * torch.sigmoid(layer.gate.norm_m(m)), **TIGHT)        # (28)


@pytest.mark.parametrize("use_memory", [True, False])
@pytest.mark.parametrize("cuts", CUTS)
def test_layer_streams_exactly(use_memory, cuts):
    layer = make_layer(use_memory)
    x = inputs()
    whole, end = layer(x)
    state, pieces = None, []
    for a, b in zip(cuts, cuts[1:]):
        o, state = layer(x[:, a:b], state)
        pieces.append(o)
    assert_close(torch.cat(pieces, dim=1), whole, **TIGHT)
    more = inputs(5, seed=4)
    assert_close(layer(more, state)[0], layer(more, end)[0], **TIGHT)


def test_without_memory_a_token_sees_only_its_window():
    """One layer: x_{t-W} and older reach o_t only through the memory."""
    x, t = inputs(), 10
    x2 = x.clone()
    x2[:, :t - W + 1] += 1.0                             # every token before the window of t
    without, with_memory = make_layer(use_memory=False), make_layer()
    assert_close(without(x2)[0][:, t], without(x)[0][:, t], rtol=0, atol=0)
    assert not torch.allclose(with_memory(x2)[0][:, t], with_memory(x)[0][:, t])


# --- the model -----------------------------------------------------------------------------------

@pytest.mark.parametrize("use_memory,conv_size", [(True, 0), (False, 0), (True, 3)])
def test_causal_at_every_position(use_memory, conv_size):
    model = make(use_memory, conv_size=conv_size)
    t = tokens()
    logits, _ = model(t)
    gen = torch.Generator().manual_seed(2)
    for j in range(t.shape[1] - 1):
        t2 = t.clone()
        t2[:, j + 1:] = (t[:, j + 1:] + torch.randint(1, V, t[:, j + 1:].shape, generator=gen)) % V
        logits2, _ = model(t2)
        assert torch.equal(logits2[:, :j + 1], logits[:, :j + 1]), f"position {j} sees the future"
        assert not torch.equal(logits2[:, j + 1:], logits[:, j + 1:])


@pytest.mark.parametrize("use_memory,conv_size", [(True, 0), (False, 0), (True, 3)])
@pytest.mark.parametrize("cuts", CUTS)
def test_model_streams_exactly(use_memory, conv_size, cuts):
    model = make(use_memory, conv_size=conv_size)
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


@pytest.mark.parametrize("use_memory", [True, False])
def test_every_parameter_gets_a_gradient(use_memory):
    model = make(use_memory)
    logits, _ = model(tokens(10))
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_without_memory_drops_the_memory_and_the_gate_only():
    with_memory, without = make(True), make(False)
    dropped = sum(num_parameters(block.attn.memory) + num_parameters(block.attn.gate) for block in with_memory.blocks)
    assert with_memory.num_parameters() - without.num_parameters() == dropped
    assert without.blocks[0].attn.memory is None and without.init_state(B).layers[0].memory is None


def test_generate_streams_the_state():
    model = make()
    prompt = tokens(5)
    greedy = model.generate(prompt, 6, temperature=0.0)
    logits, _ = model(greedy)
    assert greedy.shape == (B, 11) and torch.equal(greedy[:, 5:], logits[:, 4:-1].argmax(-1))


def test_errors():
    layer, model = make_layer(), make()
    with pytest.raises(ValueError, match=r"x must have shape \(b, n >= 1, d=16\), got \(2, 3\)"):
        layer(torch.zeros(2, 3, dtype=DT))
    with pytest.raises(ValueError, match=r"x has batch size 1 but the state holds 2"):
        layer(inputs(3, b=1), layer.init_state(B))
    with pytest.raises(TypeError, match=r"MAGLayerState or None, got tuple"):
        layer(inputs(3), (None, None))
    with pytest.raises(ValueError, match=r"\(b, n\).*\(5,\)"):
        model(torch.zeros(5, dtype=torch.int64))
    _, state = model(tokens(3))
    with pytest.raises(ValueError, match=r"tokens have batch size 1 but the state was built for batch size 2"):
        model(tokens(3, b=1), state)
    with pytest.raises(ValueError, match=r"LayerStackState with 2 layer states"):
        model(tokens(3), state.layers[0])
    with pytest.raises(ValueError, match=r"MAGLayerConfig.window must be an int >= 1, got 0"):
        MAGLayerConfig(window=0)
    with pytest.raises(ValueError, match=r"MAGConfig.memory.dim must be None .* dim=32, got 8"):
        MAGConfig(memory=NeuralMemoryConfig(dim=8))
    with pytest.raises(ValueError, match=r"MAGConfig.depth must be an int >= 1, got 0"):
        MAGConfig(depth=0)
    with pytest.raises(TypeError, match=r"config must be a MAGConfig, got MACConfig"):
        MAGTransformer(MACConfig())
    with pytest.raises(ValueError, match=r"MAGTransformer has no region to compile"):    # runs eagerly only
        compile_regions(model)
    assert isinstance(layer.init_state(B), MAGLayerState) and MAGTransformer().config == MAGConfig()
