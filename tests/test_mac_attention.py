"""MAC attention (eqs. 21-25): a written-out reference, causality against the naive forms, state."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from mac_minimal.layers import num_parameters
from mac_minimal.mac_attention import COMBINES, Combine, MACAttention, MACAttentionConfig, mac_mask
from mac_minimal.neural_memory import NeuralMemoryConfig

from conv_taps import random_taps

B, C, D = 2, 6, 16


def make(combine: str = "sum", use_memory: bool = True, seed: int = 0, max_lr: float = 0.03, **kw) -> MACAttention:
    """A float64 layer; the memory scale starts at 0.5, not 0, so eq. (25)'s memory term takes part."""
    kw.setdefault("memory_scale_init", 0.5)
    torch.manual_seed(seed)
    cfg = MACAttentionConfig(dim=D, heads=2, segment_len=C, num_persistent=3, combine=combine,
                             use_memory=use_memory, memory=NeuralMemoryConfig(chunk_size=4, max_lr=max_lr), **kw)
    return MACAttention(cfg).double()


def inputs(seed: int = 1, n: int = C) -> torch.Tensor:
    return torch.randn(B, n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def in_pieces(attn: MACAttention, x: torch.Tensor, state, cuts: list[int]):
    """The layer fed ``x[:, cuts[i]:cuts[i+1]]`` piece by piece from ``state``: the outputs joined,
    and the last state; each state's ``filled`` is checked on the way."""
    outputs = []
    for begin, end in zip(cuts, cuts[1:]):
        o, state = attn(x[:, begin:end], state)
        outputs.append(o)
        assert state.filled == end % C
    return torch.cat(outputs, 1), state


def written_state(attn: MACAttention, seed: int = 2):
    """A state whose memory has already absorbed a segment, so that eq. (21) retrieves something."""
    _, state = attn(inputs(seed))
    return state


def reference(attn: MACAttention, x: torch.Tensor, state) -> torch.Tensor:
    """Eqs. (21)-(25) written out one token at a time, with the token loop of the memory write."""
    cfg = attn.config
    e = cfg.head_dim
    h = attn.memory.read(x, state.memory_before)                                 # (21)
    heads = lambda t: rearrange(t, "b c (h e) -> b h c e", h=cfg.heads)
    q = heads(attn.to_q(x))
    k, v = (heads(t) for t in attn.to_kv(x).chunk(2, -1))
    hk, hv = (heads(t) for t in attn.to_kv(h).chunk(2, -1))
    ys = []
    for j in range(x.shape[1]):
        qj = apply_rotation(q[:, :, j], j)
        keys = [attn.persistent.keys.expand(x.shape[0], -1, -1, -1)]                  # no position
        values = [attn.persistent.values.expand(x.shape[0], -1, -1, -1)]
        keys += [torch.stack([apply_rotation(hk[:, :, i], i) for i in range(j + 1)], 2),          # h_0 .. h_j
                 torch.stack([apply_rotation(k[:, :, i], i) for i in range(j + 1)], 2)]           # S_0 .. S_j
        values += [hv[:, :, :j + 1], v[:, :, :j + 1]]
        keys, values = torch.cat(keys, 2), torch.cat(values, 2)
        weights = torch.softmax(torch.einsum("bhe,bhke->bhk", qj, keys) / math.sqrt(e), -1)
        ys.append(torch.einsum("bhk,bhke->bhe", weights, values))
    y = attn.to_out(rearrange(torch.stack(ys, 2), "b h c e -> b c (h e)"))       # (22)-(23)
    written = y if cfg.memory_input == "output" else x                            # what eq. (24) writes
    m, _ = attn.memory.forward_sequential(written, state.memory)                 # (24), token loop: M_j(y_j)
    if attn.memory_scale is not None:                                            # chapter 8's learned scale
        m = attn.memory_scale * m
    return attn.combine(y, m)                                                    # (25)


def apply_rotation(t: torch.Tensor, pos: int) -> torch.Tensor:
    """Rotate the pairs (t[2i], t[2i+1]) of t (..., e) by pos * 10000^(-2i/e): RoPE by hand."""
    e = t.shape[-1]
    angle = pos * 10000.0 ** (-torch.arange(0, e, 2, dtype=torch.float64) / e)
    even, odd = t[..., 0::2], t[..., 1::2]
    out = torch.stack((even * angle.cos() - odd * angle.sin(), even * angle.sin() + odd * angle.cos()), -1)
    return out.flatten(-2)


# ---------------------------------------------------------------- the naive (leaky) readings
def naive(attn: MACAttention, x: torch.Tensor, state, leaky_retrieval: bool, leaky_combine: bool):
    """Eqs. (21)-(25) read literally: every token sees all of h, and/or reads the end-of-segment memory."""
    h = attn.retrieve(x, state)
    q, k, v, _ = attn.qkv(x, h, state)
    mask = attn.mask(x.shape[1], 0)
    if leaky_retrieval:
        c, p = x.shape[1], attn.config.num_persistent
        mask[:, p:p + c] = True                                     # token j sees h_k for every k
    y = attn.to_out(rearrange(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), "b h c e -> b c (h e)"))
    if leaky_combine:
        m = attn.memory.read(y, attn.memory.write(y, state.memory))  # M_t after ALL of y
    else:
        m, _ = attn.memory(y, state.memory)
    return attn.combine(y, m)


def leaks(fn, x: torch.Tensor) -> bool:
    """True if changing tokens after j changes some output at <= j (exact comparison)."""
    out = fn(x)
    for j in range(x.shape[1] - 1):
        x2 = x.clone()
        x2[:, j + 1:] = torch.randn_like(x2[:, j + 1:])
        if not torch.equal(fn(x2)[:, :j + 1], out[:, :j + 1]):
            return True
    return False


@pytest.mark.parametrize("memory_scale_init,memory_input", [(None, "output"), (0.7, "output"), (0.7, "input")])
@pytest.mark.parametrize("combine", COMBINES)
def test_forward_equals_written_out_reference_with_gradients(combine, memory_scale_init, memory_input):
    attn = make(combine, memory_scale_init=memory_scale_init, memory_input=memory_input)
    state = written_state(attn)
    x = inputs().requires_grad_()
    out, _ = attn(x, state)
    ref = reference(attn, x, state)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    params = [x] + list(attn.parameters())
    grads = torch.autograd.grad((out * g).sum(), params, allow_unused=True, retain_graph=True)
    ref_grads = torch.autograd.grad((ref * g).sum(), params, allow_unused=True)
    for a, r in zip(grads, ref_grads):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10)


def test_package_is_causal_and_both_naive_readings_leak():
    attn = make(memory_scale_init=None)                             # eq. (25) as the paper writes it
    state = written_state(attn)
    x = inputs()
    assert not leaks(lambda t: attn(t, state)[0], x)
    assert not leaks(lambda t: naive(attn, t, state, False, False), x)
    assert leaks(lambda t: naive(attn, t, state, True, False), x)
    assert leaks(lambda t: naive(attn, t, state, False, True), x)
    torch.testing.assert_close(naive(attn, x, state, False, False), attn(x, state)[0], rtol=1e-12, atol=1e-12)


def test_without_memory_is_causal():
    attn = make(use_memory=False)
    assert not leaks(lambda t: attn(t)[0], inputs())


def test_mask_matches_its_definition():
    p, f, c = 2, 3, 4
    mask = mac_mask(c, f, p)
    assert mask.shape == (c, p + 2 * (f + c))
    for i in range(c):
        for col in range(mask.shape[1]):
            if col < p:
                expected = True
            else:
                k = (col - p) % (f + c)                      # index in h (first block) or S (second)
                expected = k <= f + i
            assert bool(mask[i, col]) == expected
    torch.testing.assert_close(mac_mask(c, f, p, retrieved=False), torch.cat((mask[:, :p], mask[:, p + f + c:]), 1))


@pytest.mark.parametrize("use_memory", [True, False])
def test_pieces_of_a_segment_equal_the_segment(use_memory):
    attn = make(use_memory=use_memory)
    state = written_state(attn)
    x = inputs()
    whole, end_state = attn(x, state)
    pieces, s = in_pieces(attn, x, state, [0, 1, 4, 5, 6])
    torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=1e-12)
    if use_memory:
        for a, b in zip(s.memory.weights, end_state.memory.weights):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_segment_end_rolls_the_state_over():
    attn = make()
    state = written_state(attn)
    x = inputs()
    out, new = attn(x, state)
    assert new.filled == 0 and new.retrieved_keys.shape == (B, 2, 0, D // 2)
    assert new.memory_before is new.memory
    # eq. (24): the memory after the segment is the old one with y written in
    h = attn.retrieve(x, state)
    y, _ = attn.attend(x, h, state)
    expected = attn.memory.write(y, state.memory)
    for a, b in zip(new.memory.weights, expected.weights):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # a half-filled segment keeps retrieving from the memory before the segment
    _, half = attn(x[:, :3], state)
    assert half.filled == 3 and half.memory_before is state.memory_before


def test_retrieval_reads_memory_before_segment():
    attn = make()
    state = written_state(attn)
    x = inputs()
    torch.testing.assert_close(attn.retrieve(x, state), attn.memory.read(x, state.memory_before))
    # eq. (21) with a fresh memory differs from eq. (21) with the written one: memory matters
    fresh = attn.init_state(B)
    assert not torch.allclose(attn(x, fresh)[0], attn(x, state)[0])


@pytest.mark.parametrize("use_memory", [True, False])
def test_attention_weights_are_the_ones_forward_uses(use_memory):
    attn = make(use_memory=use_memory)
    state = written_state(attn)
    x = inputs()
    w = attn.attention_weights(x, state)
    p, c = 3, C
    assert w.shape == (B, 2, c, p + (2 if use_memory else 1) * c)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, 2, c, dtype=torch.float64))
    assert torch.all(w[..., ~attn.mask(c, 0)] == 0)
    h = attn.retrieve(x, state) if use_memory else None
    _, _, v, _ = attn.qkv(x, h, state)
    y, _ = attn.attend(x, h, state)
    torch.testing.assert_close(attn.to_out(rearrange(w @ v, "b h c e -> b c (h e)")), y)


def test_combine_variants():
    y, m = torch.randn(2, 3, D, dtype=torch.float64), torch.randn(2, 3, D, dtype=torch.float64)
    torch.testing.assert_close(Combine(D, "gate")(y, m), y * torch.sigmoid(m))
    torch.testing.assert_close(Combine(D, "sum")(y, m), y + m)
    mlp = Combine(D, "mlp").double()
    torch.testing.assert_close(mlp(y, m), mlp.mlp(torch.cat((y, m), -1)))
    assert num_parameters(mlp) == 3 * D * D + 2 * D
    assert num_parameters(Combine(D, "gate")) == 0
    with pytest.raises(ValueError, match="combine must be one of"):
        Combine(D, "product")


def test_without_memory_has_no_memory_parameters():
    with_memory, without = make(), make(use_memory=False)
    assert without.memory is None and without.combine is None
    extra = num_parameters(with_memory.memory) + with_memory.memory_scale.numel()
    assert num_parameters(with_memory) - num_parameters(without) == extra


def test_errors():
    """Checked once, in the config and at the layer's entry; each message says what was expected
    and what was given."""
    with pytest.raises(ValueError, match=r"even.*dim=12, heads=4"):
        MACAttentionConfig(dim=12, heads=4)
    with pytest.raises(ValueError, match=r"segment_len.*int >= 1.*0"):
        MACAttentionConfig(segment_len=0)
    with pytest.raises(ValueError, match=r"num_persistent.*int >= 0.*-2"):
        MACAttentionConfig(num_persistent=-2)
    with pytest.raises(ValueError, match=r"base.*> 1.*1\.0"):
        MACAttentionConfig(rotary_base=1.0)
    with pytest.raises(ValueError, match=r"combine.*'sum'.*'concat'"):
        MACAttentionConfig(combine="concat")
    with pytest.raises(TypeError, match=r"MACAttentionConfig.*dict"):
        MACAttention({"dim": 4})
    attn = make()
    with pytest.raises(ValueError, match=r"d=16.*\(2, 3, 8\)"):
        attn(torch.zeros(2, 3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"d=16.*\(3, 16\)"):
        attn(torch.zeros(3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"1 .. 6 tokens.*7"):
        attn(torch.zeros(2, 7, D, dtype=torch.float64))
    _, state = attn(inputs()[:, :4])
    with pytest.raises(ValueError, match=r"1 .. 2 tokens.*segment_len=6.*4 already.*3"):
        attn(inputs()[:, :3], state)
    with pytest.raises(ValueError, match=r"batch size 1.*2"):
        attn(inputs()[:1, :1], state)


# ---------------------------------------------------------------- trainability knobs
def test_memory_scale_multiplies_the_memory_term_and_is_learned():
    """``memory_scale_init`` s: o = combine(y, s * M_t(y)); at s = 0 the sum combine gives o = y."""
    plain, scaled = make(memory_scale_init=None), make(memory_scale_init=0.0)
    scaled.load_state_dict(plain.state_dict() | {"memory_scale": torch.tensor(0.0, dtype=torch.float64)})
    state = written_state(plain)
    x = inputs()
    y, _ = plain.attend(x, plain.retrieve(x, state), state)
    o, _ = scaled(x, state)
    torch.testing.assert_close(o, y, rtol=0, atol=0)
    with torch.no_grad():
        scaled.memory_scale.fill_(0.5)
    m, _ = plain.memory(y, state.memory)
    torch.testing.assert_close(scaled(x, state)[0], y + 0.5 * m, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(scaled(x, state)[0].square().sum(), scaled.memory_scale)
    assert grad.abs() > 0
    assert plain.memory_scale is None and make(use_memory=False, memory_scale_init=0.0).memory_scale is None


def test_memory_config_reaches_the_memory_at_the_layer_width():
    attn = make(max_lr=0.05)
    assert attn.memory.config == NeuralMemoryConfig(dim=D, chunk_size=4, max_lr=0.05)
    assert attn.config.memory.dim is None                           # the config itself is untouched
    theta, _, _ = attn.memory.rates(inputs() * 100)
    assert (theta < 0.05).all() and (theta > 0).all()


def test_memory_config_defaults_and_errors():
    """The layer's default memory (chunks of 8, step cap 0.03) lives in one place; a width other
    than the layer's, or something that is not a NeuralMemoryConfig, is refused by name."""
    default = MACAttentionConfig()
    assert (default.memory.chunk_size, default.memory.max_lr, default.memory.dim) == (8, 0.03, None)
    assert MACAttentionConfig(dim=16, memory=NeuralMemoryConfig(dim=16)).memory_config.dim == 16
    assert replace(default, dim=64).memory_config.dim == 64
    with pytest.raises(ValueError, match=r"memory\.dim.*None.*dim=32.*got 16"):
        MACAttentionConfig(dim=32, memory=NeuralMemoryConfig(dim=16))
    with pytest.raises(TypeError, match=r"memory.*NeuralMemoryConfig.*chunk_size"):
        MACAttentionConfig(memory={"chunk_size": 4})
    with pytest.raises(ValueError, match=r"memory_scale_init.*finite.*nan"):
        MACAttentionConfig(memory_scale_init=float("nan"))
    with pytest.raises(ValueError, match=r"memory_input must be one of \('output', 'input'\), got 'y'"):
        MACAttentionConfig(memory_input="y")


def test_memory_input_chooses_what_eq_24_writes():
    """``memory_input="input"``: the memory writes the layer's input x and eq. (25) reads M_t(x_t); the
    attention output no longer reaches the memory term, and eq. (21)'s read is the same."""
    x = inputs()
    for memory_input in ("output", "input"):
        attn = make(memory_input=memory_input)
        state = written_state(attn)
        _, after = attn(x, state)
        written = x if memory_input == "input" else attn.attend(x, attn.retrieve(x, state), state)[0]
        expected = attn.memory.write(written, state.memory)
        for a, e in zip(after.memory_before.weights, expected.weights):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("memory_scale_init", [0.0, 1.0])
def test_scaled_memory_is_causal_and_streams(memory_scale_init):
    attn = make(memory_scale_init=memory_scale_init)
    state = written_state(attn)
    x = inputs()
    whole, _ = attn(x, state)
    torch.testing.assert_close(in_pieces(attn, x, state, [0, 2, 3, C])[0], whole, rtol=1e-12, atol=1e-12)
    x2 = x.clone()
    x2[:, 3:] += 1.0
    assert torch.equal(attn(x2, state)[0][:, :3], whole[:, :3])


def test_the_memory_convolution_reads_across_the_segment_edge():
    """Eq. (21)'s queries of segment 2 are convolved over the last K - 1 tokens of segment 1, and the
    memory's own write over the last K - 1 outputs y of segment 1: both windows cross the edge."""
    torch.manual_seed(0)
    cfg = MACAttentionConfig(dim=D, heads=2, segment_len=C, num_persistent=3, memory_scale_init=0.5,
                             memory=NeuralMemoryConfig(chunk_size=4, max_lr=0.03, conv_size=3))
    attn = random_taps(MACAttention(cfg).double())
    x1, x2 = inputs(1), inputs(2)
    _, state = attn(x1, None)
    assert state.filled == 0 and torch.equal(state.recent_inputs, x1[:, -2:])
    h = attn.retrieve(x2, state)
    torch.testing.assert_close(h, attn.memory.read(x2, state.memory_before, recent=x1[:, -2:]))
    assert not torch.allclose(h, attn.memory.read(x2, state.memory_before))     # zeros instead: another read
    assert state.memory.recent.shape == (B, 2, D)
