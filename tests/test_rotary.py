"""Rotary position embedding: against a complex-number and a 2x2-rotation reference, and its key property."""

import pytest
import torch
from torch.testing import assert_close

from mac_minimal.mac_attention import MACAttention, MACAttentionConfig
from mac_minimal.rotary import RotaryEmbedding, apply_rotary, rotary_angles, rotary_table, rotate_pairs

DT = torch.float64


def complex_reference(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Pair (x[2i], x[2i+1]) as the complex number x[2i] + i x[2i+1] and multiply by exp(i m theta_i)."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=DT) / d)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous())
    phase = torch.polar(torch.ones((), dtype=DT), positions.to(DT)[:, None] * theta)   # (n, d/2)
    return torch.view_as_real(z * phase).reshape(x.shape)


def rotation_matrix(m: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """R_m: block-diagonal (d, d) with 2x2 blocks [[cos, -sin], [sin, cos]] at angle m theta_i."""
    R = torch.zeros(d, d, dtype=DT)
    for i in range(d // 2):
        angle = torch.tensor(m * base ** (-2 * i / d), dtype=DT)
        c, s = torch.cos(angle), torch.sin(angle)
        R[2 * i, 2 * i], R[2 * i, 2 * i + 1] = c, -s
        R[2 * i + 1, 2 * i], R[2 * i + 1, 2 * i + 1] = s, c
    return R


def test_matches_complex_reference_with_gradients():
    x = torch.randn(2, 3, 7, 8, dtype=DT, requires_grad=True)
    pos = torch.tensor([0, 1, 5, 9, 100, 4096, -3])
    out = apply_rotary(x, pos)
    ref = complex_reference(x, pos)
    assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    assert_close(gx, gr, rtol=1e-12, atol=1e-12)


def test_matches_explicit_2x2_rotation_matrices():
    d = 6
    x = torch.randn(4, d, dtype=DT)
    pos = torch.tensor([0, 3, 17, 250])
    out = apply_rotary(x, pos)
    for row, m in enumerate(pos.tolist()):
        assert_close(out[row], rotation_matrix(m, d) @ x[row], rtol=1e-12, atol=1e-12)


def test_position_zero_is_identity_and_norms_are_kept():
    x = torch.randn(2, 2, 5, 8, dtype=DT)
    assert torch.equal(apply_rotary(x, torch.zeros(5, dtype=torch.long)), x)
    out = apply_rotary(x, torch.arange(5) * 37)
    assert_close(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)


def test_scores_depend_only_on_position_difference():
    d = 8
    q, k = torch.randn(d, dtype=DT), torch.randn(d, dtype=DT)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rotary(q[None], torch.tensor([m]))[0]
        kn = apply_rotary(k[None], torch.tensor([n]))[0]
        return qm @ kn

    for delta in (0, 1, -2, 7, 300):
        scores = torch.stack([score(m, m + delta) for m in (0, 5, 123, 10_000)])
        assert_close(scores, scores[:1].expand_as(scores), rtol=1e-9, atol=1e-9)
        # (R_m q).(R_n k) = q.(R_{n-m} k)
        assert_close(scores[0], q @ rotation_matrix(delta, d) @ k, rtol=1e-12, atol=1e-12)
    # and it does depend on the difference
    assert abs(float(score(0, 1) - score(0, 2))) > 1e-3


def test_segment_at_offset_equals_rows_of_the_whole_stream():
    x = torch.randn(1, 2, 20, 8, dtype=DT)
    whole = apply_rotary(x, torch.arange(20))
    s = 12
    part = apply_rotary(x[:, :, s:], torch.arange(s, 20))
    assert torch.equal(part, whole[:, :, s:])


def test_module_equals_function_and_keeps_dtype():
    rope = RotaryEmbedding(8, base=500.0)
    x = torch.randn(2, 3, 4, 8)
    pos = torch.arange(4) + 10
    assert torch.equal(rope(x, pos), apply_rotary(x, pos, base=500.0))
    assert rope(x, pos).dtype == torch.float32
    assert rotary_angles(pos, 8).shape == (4, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_of_the_table_rotate_exactly_as_the_positions_do(dtype):
    """rotate_pairs with rows start .. start + n - 1 of rotary_table is apply_rotary at those
    positions, bit for bit (the same float64 angles, cast the same way)."""
    x = torch.randn(2, 3, 5, 8, dtype=dtype)
    cos, sin = rotary_table(12, 8, base=500.0)
    assert cos.shape == sin.shape == (12, 4) and cos.dtype == torch.float64
    assert torch.equal(rotate_pairs(x, cos[4:9], sin[4:9]), apply_rotary(x, torch.arange(4, 9), base=500.0))


def test_mac_rotates_with_its_segment_table_and_does_not_save_it():
    """MAC's table covers the positions inside a segment, in the layer's base; it is a buffer (it
    moves with the module) kept out of the state_dict, so checkpoints are unchanged."""
    layer = MACAttention(MACAttentionConfig(dim=16, heads=2, num_persistent=2, segment_len=6, rotary_base=300.0))
    cos, sin = rotary_table(6, 8, base=300.0)
    assert torch.equal(layer.rotary_cos, cos) and torch.equal(layer.rotary_sin, sin)
    assert not any("rotary" in key for key in layer.state_dict())
    assert {name for name, _ in layer.named_buffers()} == {"rotary_cos", "rotary_sin"}


def test_clear_errors():
    """Each message says what rotary needs and what it was given."""
    with pytest.raises(ValueError, match=r"even.*dim=7"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match=r"base.*> 1.*1\.0"):
        RotaryEmbedding(8, base=1.0)
    with pytest.raises(ValueError, match=r"head_dim=8.*\(2, 3, 4, 6\)"):
        RotaryEmbedding(8)(torch.randn(2, 3, 4, 6), torch.arange(4))
    with pytest.raises(ValueError, match=r"even head_dim.*\(3, 5\)"):
        apply_rotary(torch.randn(3, 5), torch.arange(3))
    with pytest.raises(ValueError, match=r"positions of shape \(n,\).*\(2, 4, 8\).*\(5,\)"):
        apply_rotary(torch.randn(2, 4, 8), torch.arange(5))
    with pytest.raises(ValueError, match=r"positions of shape \(n,\).*\(1, 4\)"):
        apply_rotary(torch.randn(2, 4, 8), torch.arange(4)[None])
    with pytest.raises(ValueError, match=r"\(\.\.\., n, head_dim\).*\(8,\)"):
        apply_rotary(torch.randn(8), torch.arange(1))
    cos, sin = rotary_table(4, 8)
    with pytest.raises(ValueError, match=r"cos, sin of shape \(n, head_dim / 2\).*\(2, 3, 8\).*\(4, 4\)"):
        rotate_pairs(torch.randn(2, 3, 8), cos, sin)
    with pytest.raises(ValueError, match=r"even head_dim.*\(2, 4, 7\)"):
        rotate_pairs(torch.randn(2, 4, 7), cos, sin)
