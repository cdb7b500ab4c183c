"""The full-attention reference: fused attention equals the plain formula, the model is causal."""

import math

import pytest
import torch

from mac_minimal.baseline import FullAttentionConfig, FullAttentionTransformer, causal_attention


def reference_attention(q, k, v):
    """softmax(q k^T / sqrt(e) with future keys masked) v, one query row at a time."""
    rows = []
    for i in range(q.shape[2]):
        scores = q[:, :, i : i + 1] @ k[:, :, : i + 1].transpose(-1, -2) / math.sqrt(q.shape[-1])
        rows.append(scores.softmax(-1) @ v[:, :, : i + 1])
    return torch.cat(rows, dim=2)


def test_causal_attention_equals_row_by_row_reference_with_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out, ref = causal_attention(q, k, v), reference_attention(q, k, v)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * weights).sum(), (q, k, v))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_shapes_and_no_state(positions):
    model = FullAttentionTransformer(FullAttentionConfig(vocab_size=11, positions=positions))
    logits, state = model(torch.randint(0, 11, (3, 9)))
    assert logits.shape == (3, 9, 11) and state is None


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_model_is_causal(positions):
    torch.manual_seed(0)
    model = FullAttentionTransformer(FullAttentionConfig(vocab_size=13, positions=positions)).double()
    tokens = torch.randint(0, 13, (2, 12))
    changed = tokens.clone()
    j = 5
    changed[:, j + 1 :] = (changed[:, j + 1 :] + 1) % 13
    logits, _ = model(tokens)
    logits_changed, _ = model(changed)
    assert torch.equal(logits[:, : j + 1], logits_changed[:, : j + 1])
    assert not torch.allclose(logits[:, j + 1 :], logits_changed[:, j + 1 :])


def test_rotary_model_has_no_position_table_and_learned_has_one():
    rotary = FullAttentionTransformer(FullAttentionConfig(positions="rotary"))
    learned = FullAttentionTransformer(FullAttentionConfig(positions="learned", max_seq_len=64))
    extra = sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in rotary.parameters())
    assert extra == 64 * 32


def test_mlp_hidden_sets_the_mlp_width():
    wide = FullAttentionTransformer(FullAttentionConfig(dim=8, depth=1, heads=2, mlp_hidden=50))
    assert wide.blocks[0].mlp[0].out_features == 50
    default = FullAttentionTransformer(FullAttentionConfig(dim=8, depth=1, heads=2))
    assert default.blocks[0].mlp[0].out_features == 32


@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=30, heads=4), "divisible by heads"),
    (dict(dim=12, heads=4), r"even integer \(rotary\), got dim=12, heads=4"),
    (dict(positions="alibi"), "positions must be one of"),
    (dict(depth=0), "depth must be >= 1"),
    (dict(mlp_hidden=-1), "mlp_hidden must be >= 0"),
])
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FullAttentionConfig(**kwargs)


def test_bad_input_is_rejected():
    model = FullAttentionTransformer(FullAttentionConfig(vocab_size=10, positions="learned", max_seq_len=8))
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(1, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"shape \(b, n\)"):
        model(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(IndexError, match=r"\[0, vocab_size=10\)"):
        model(torch.full((1, 4), 10))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="state must be None"):
        model(torch.zeros(1, 4, dtype=torch.int64), state=torch.zeros(1))
