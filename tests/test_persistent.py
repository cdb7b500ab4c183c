"""Persistent memory (eq. 19): both storage modes against a plain loop, causality, and what a shift of positions does."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mac_minimal.persistent import (
    PersistentAttention,
    PersistentAttentionConfig,
    PersistentKV,
    PersistentMemoryConfig,
    PrependedPersistentTokens,
    causal_mask_with_prefix,
)
from mac_minimal.rotary import apply_rotary

from gradients import assert_same_values_and_gradients

DT = torch.float64
MODES = ("kv", "tokens")
TIGHT = dict(rtol=1e-10, atol=1e-12)


def make_layer(mode: str, num_persistent: int = 3, seed: int = 0, **kw) -> PersistentAttention:
    torch.manual_seed(seed)
    cfg = PersistentAttentionConfig(dim=16, heads=2, num_persistent=num_persistent, mode=mode, **kw)
    return PersistentAttention(cfg).to(DT)


def loop_reference(layer: PersistentAttention, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One query at a time: eq. (19) read literally, softmax over [persistent slots, keys at or before the query]."""
    cfg = layer.config
    b, n, d = x.shape
    num_p, e = cfg.num_persistent, cfg.head_dim
    if cfg.mode == "tokens":
        # an ordinary causal attention over [p || x] at positions 0 .. N_p + n - 1; keep the outputs of x
        seq = torch.cat([layer.persistent.tokens.expand(b, num_p, d), x], dim=1)
        pos = torch.cat([torch.arange(num_p), num_p + positions])
    else:
        seq, pos = x, positions
    q, k, v = layer.to_qkv(seq).split(d, dim=-1)                      # (b, m, d) each
    q, k, v = (t.view(b, -1, cfg.heads, e).transpose(1, 2) for t in (q, k, v))   # (b, h, m, e)
    q, k = apply_rotary(q, pos, cfg.rotary_base), apply_rotary(k, pos, cfg.rotary_base)
    out = torch.zeros(b, cfg.heads, n, e, dtype=x.dtype)
    for i in range(n):
        if cfg.mode == "tokens":
            row = num_p + i
            keys, values, query = k[:, :, : row + 1], v[:, :, : row + 1], q[:, :, row]
        else:
            pk = layer.persistent.keys.expand(b, -1, -1, -1)
            pv = layer.persistent.values.expand(b, -1, -1, -1)
            keys = torch.cat([pk, k[:, :, : i + 1]], dim=2)
            values = torch.cat([pv, v[:, :, : i + 1]], dim=2)
            query = q[:, :, i]
        w = torch.softmax(torch.einsum("bhe,bhje->bhj", query, keys) / math.sqrt(e), dim=-1)
        out[:, :, i] = torch.einsum("bhj,bhje->bhe", w, values)
    return layer.to_out(out.transpose(1, 2).reshape(b, n, d))


# --- the mask -----------------------------------------------------------------------------------

def test_mask_matches_its_definition():
    for n_q, n_p, n_k in [(1, 0, None), (4, 3, None), (3, 2, 7), (5, 0, 5)]:
        mask = causal_mask_with_prefix(n_q, n_p, n_k)
        n_k = n_q if n_k is None else n_k
        assert mask.shape == (n_q, n_p + n_k) and mask.dtype == torch.bool
        for i in range(n_q):
            for j in range(n_p + n_k):
                allowed = j < n_p or (j - n_p) <= (n_k - n_q + i)
                assert bool(mask[i, j]) == allowed


def test_mask_errors():
    with pytest.raises(ValueError, match="n_queries >= 1"):
        causal_mask_with_prefix(0, 2)
    with pytest.raises(ValueError, match="n_prefix >= 0"):
        causal_mask_with_prefix(3, -1)
    with pytest.raises(ValueError, match="n_keys >= n_queries"):
        causal_mask_with_prefix(4, 1, 3)


# --- the two storage forms ----------------------------------------------------------------------

def test_persistent_kv_prepends_the_same_unrotated_slots_to_every_batch_element():
    pkv = PersistentKV(heads=2, num_persistent=3, head_dim=4).to(DT)
    k, v = torch.randn(5, 2, 7, 4, dtype=DT), torch.randn(5, 2, 7, 4, dtype=DT)
    k2, v2 = pkv.prepend(k, v)
    assert k2.shape == v2.shape == (5, 2, 10, 4)
    assert torch.equal(k2[:, :, :3], pkv.keys.expand(5, -1, -1, -1))
    assert torch.equal(v2[:, :, :3], pkv.values.expand(5, -1, -1, -1))
    assert torch.equal(k2[:, :, 3:], k) and torch.equal(v2[:, :, 3:], v)
    assert torch.equal(pkv(k, v)[0], k2)


def test_prepended_tokens_shape_and_content():
    pt = PrependedPersistentTokens(num_persistent=3, dim=8).to(DT)
    x = torch.randn(2, 5, 8, dtype=DT)
    y = pt(x)
    assert y.shape == (2, 8, 8)
    assert torch.equal(y[:, :3], pt.tokens.expand(2, -1, -1)) and torch.equal(y[:, 3:], x)


# --- errors: checked once, in the configs and at the layer's entry; each message names the field,
# what it must be and what it got ---------------------------------------------------------------

def test_config_errors():
    assert PersistentMemoryConfig().head_dim * PersistentMemoryConfig().heads == PersistentMemoryConfig().dim
    with pytest.raises(ValueError, match=r"even.*rotary.*dim=10, heads=4"):
        PersistentMemoryConfig(dim=10, heads=4)
    with pytest.raises(ValueError, match=r"num_persistent.*>= 0.*-1"):
        PersistentMemoryConfig(num_persistent=-1)
    with pytest.raises(ValueError, match=r"heads.*>= 1.*0"):
        PersistentMemoryConfig(heads=0)
    with pytest.raises(ValueError, match=r"even.*rotary.*dim=12, heads=4"):
        PersistentAttentionConfig(dim=12, heads=4)
    with pytest.raises(ValueError, match=r"base.*> 1.*0\.5"):
        PersistentMemoryConfig(rotary_base=0.5)
    with pytest.raises(ValueError, match=r"mode.*'kv'.*'prefix'"):
        PersistentAttentionConfig(mode="prefix")
    with pytest.raises(TypeError, match=r"PersistentAttentionConfig.*PersistentMemoryConfig"):
        PersistentAttention(PersistentMemoryConfig())


def test_layer_input_errors():
    layer = PersistentAttention(PersistentAttentionConfig())
    with pytest.raises(ValueError, match=r"x.*d=32.*\(2, 5, 16\)"):
        layer(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"x.*d=32.*\(5, 32\)"):
        layer(torch.randn(5, 32))
    with pytest.raises(ValueError, match=r"positions.*\(5,\).*\(4,\)"):
        layer(torch.randn(2, 5, 32), torch.arange(4))


# --- the layer ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_layer_equals_loop_reference_with_gradients(mode):
    layer = make_layer(mode)
    x = torch.randn(2, 6, 16, dtype=DT, requires_grad=True)
    pos = torch.arange(6) + 3
    y = layer(x, pos)
    assert y.shape == (2, 6, 16)
    assert_same_values_and_gradients([y], [loop_reference(layer, x, pos)], [x, *layer.parameters()], **TIGHT)


@pytest.mark.parametrize("mode", MODES)
def test_sdpa_output_equals_explicit_weights_times_values(mode):
    layer = make_layer(mode)
    x = torch.randn(2, 5, 16, dtype=DT, requires_grad=True)
    w = layer.attention_weights(x)
    assert w.shape == (2, 2, 5, 3 + 5)
    assert_close(w.sum(-1), torch.ones(2, 2, 5, dtype=DT), **TIGHT)
    _, _, v = layer.qkv(x)
    explicit = layer.to_out((w @ v).transpose(1, 2).reshape(2, 5, 16))
    assert_same_values_and_gradients([layer(x)], [explicit], [x, *layer.parameters()], **TIGHT)


@pytest.mark.parametrize("mode", MODES)
def test_causal_future_tokens_do_not_change_past_outputs(mode):
    layer = make_layer(mode)
    x = torch.randn(2, 8, 16, dtype=DT)
    j = 4
    x2 = x.clone()
    x2[:, j + 1:] = torch.randn(2, 8 - j - 1, 16, dtype=DT)
    y, y2 = layer(x), layer(x2)
    assert_close(y[:, : j + 1], y2[:, : j + 1], rtol=0, atol=0)
    assert (y[:, j + 1:] - y2[:, j + 1:]).abs().max() > 1e-3
    w, w2 = layer.attention_weights(x), layer.attention_weights(x2)
    assert_close(w[:, :, : j + 1], w2[:, :, : j + 1], rtol=0, atol=0)


def test_without_persistent_slots_both_modes_are_plain_causal_attention():
    kv, tokens = make_layer("kv", num_persistent=0), make_layer("tokens", num_persistent=0)
    tokens.to_qkv.load_state_dict(kv.to_qkv.state_dict())
    tokens.to_out.load_state_dict(kv.to_out.state_dict())
    x = torch.randn(2, 6, 16, dtype=DT)
    assert_close(kv(x), tokens(x), **TIGHT)
    q, k, v = kv.qkv(x)
    plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(kv(x), kv.to_out(plain.transpose(1, 2).reshape(2, 6, 16)), **TIGHT)


def test_mode_kv_keys_and_values_are_the_stored_vectors_at_every_position():
    layer = make_layer("kv")
    x = torch.randn(2, 5, 16, dtype=DT)
    for s in (0, 7, 1000):
        _, k, v = layer.qkv(x, torch.arange(5) + s)
        assert torch.equal(k[:, :, :3], layer.persistent.keys.expand(2, -1, -1, -1))
        assert torch.equal(v[:, :, :3], layer.persistent.values.expand(2, -1, -1, -1))


# --- what a shift of all positions by s does (the honest statement about "no position") ---------

def test_without_persistent_slots_the_layer_is_shift_invariant():
    layer = make_layer("kv", num_persistent=0)
    x = torch.randn(2, 6, 16, dtype=DT)
    for s in (1, 50, 3000):
        assert_close(layer(x, torch.arange(6) + s), layer(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_shift_moves_queries_away_from_persistent_keys_at_fixed_positions(mode):
    """Sequence-vs-sequence scores are shift invariant. Persistent slots sit at fixed positions
    (kv: all at 0, since an un-rotated key is a key at position 0; tokens: 0 .. N_p-1), so shifting the
    sequence by s is the same as leaving it and rotating the persistent keys by -s."""
    layer = make_layer(mode)
    x = torch.randn(2, 6, 16, dtype=DT)
    num_p = 3
    q0, k0, v0 = layer.qkv(x)
    for s in (1, 50, 3000):
        qs, ks, vs = layer.qkv(x, torch.arange(6) + s)
        # sequence-vs-sequence scores: relative positions only
        assert_close(qs @ ks[:, :, num_p:].transpose(-2, -1), q0 @ k0[:, :, num_p:].transpose(-2, -1), rtol=1e-9, atol=1e-9)
        # persistent scores: query at m+s against p == query at m against R_{-s} p
        k0_moved = torch.cat([apply_rotary(k0[:, :, :num_p], torch.full((num_p,), -s)), k0[:, :, num_p:]], dim=2)
        assert_close(qs @ ks[:, :, :num_p].transpose(-2, -1), q0 @ k0_moved[:, :, :num_p].transpose(-2, -1),
                     rtol=1e-9, atol=1e-9)
        mask = causal_mask_with_prefix(6, num_p)
        assert_close(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask),
                     F.scaled_dot_product_attention(q0, k0_moved, v0, attn_mask=mask), rtol=1e-9, atol=1e-9)
        # so neither mode is shift invariant once it has persistent slots
        assert (layer(x, torch.arange(6) + s) - layer(x)).abs().max() > 1e-3


def test_mode_kv_slot_scores_equal_keys_rotated_at_position_zero():
    """(R_m q) . p == (R_m q) . (R_0 p) == q . (R_{-m} p) for every query position m."""
    layer = make_layer("kv")
    x = torch.randn(1, 5, 16, dtype=DT)
    pos = torch.arange(5) * 11 + 2
    qs, ks, _ = layer.qkv(x, pos)
    q_unrotated = layer.to_qkv(x)[..., :16].view(1, 5, 2, 8).transpose(1, 2)
    p = layer.persistent.keys                                               # (h, N_p, e)
    for i, m in enumerate(pos.tolist()):
        p_back = apply_rotary(p, torch.full((3,), -m))
        assert_close(torch.einsum("he,hpe->hp", qs[0, :, i], p),
                     torch.einsum("he,hpe->hp", q_unrotated[0, :, i], p_back), rtol=1e-10, atol=1e-10)
