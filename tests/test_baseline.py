"""The full-attention reference: shapes, causality, positions, and clear errors.

Its attention (``mac_minimal.attention.causal_attention``) is tested in ``test_attention.py``."""

import pytest
import torch

from mac_minimal.baseline import FullAttentionConfig, FullAttentionTransformer
from mac_minimal.layers import num_parameters


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
    extra = num_parameters(learned) - num_parameters(rotary)
    assert extra == 64 * 32


def test_mlp_hidden_sets_the_mlp_width():
    wide = FullAttentionTransformer(FullAttentionConfig(dim=8, depth=1, heads=2, mlp_hidden=50))
    assert wide.blocks[0].mlp[0].out_features == 50
    default = FullAttentionTransformer(FullAttentionConfig(dim=8, depth=1, heads=2))
    assert default.blocks[0].mlp[0].out_features == 32


# each message names the field, what it must be and what it got
@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=30, heads=4), r"divisible by heads.*dim=30, heads=4"),
    (dict(dim=12, heads=4), r"even.*rotary.*dim=12, heads=4"),
    (dict(positions="alibi"), r"positions.*rotary.*learned.*'alibi'"),
    (dict(depth=0), r"depth.*int >= 1.*0"),
    (dict(mlp_hidden=-1), r"mlp_hidden.*>= 0.*-1"),
    (dict(heads=2.0), r"heads.*int >= 1.*2\.0"),
])
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FullAttentionConfig(**kwargs)


def test_bad_input_is_rejected():
    model = FullAttentionTransformer(FullAttentionConfig(vocab_size=10, positions="learned", max_seq_len=8))
    with pytest.raises(TypeError, match=r"int64.*int32"):
        model(torch.zeros(1, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\(b, n\).*\(4,\)"):
        model(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(IndexError, match=r"vocab_size=10.*\[10, 10\]"):
        model(torch.full((1, 4), 10))
    with pytest.raises(ValueError, match=r"max_seq_len=8.*n=9"):
        model(torch.zeros(1, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="state must be None"):
        model(torch.zeros(1, 4, dtype=torch.int64), state=torch.zeros(1))


def test_rotary_table_gives_the_same_rotation_as_angles_at_each_position():
    """The model rotates q and k with one table per call (outside the blocks, so a compiled block
    sees it as an input): the same numbers, bit for bit, as apply_rotary at positions 0 .. n - 1."""
    from mac_minimal import baseline
    from mac_minimal.attention import causal_attention, split_heads
    from mac_minimal.rotary import apply_rotary
    torch.manual_seed(0)
    model = FullAttentionTransformer(FullAttentionConfig(vocab_size=11, dim=16, heads=2, depth=1))
    tokens = torch.randint(0, 11, (2, 9))
    seen = {}
    model.blocks[0].to_qkv.register_forward_hook(lambda module, args, out: seen.setdefault("qkv", out))
    rotated = {}

    def spy(q, k, v):
        rotated["q"], rotated["k"] = q, k
        return causal_attention(q, k, v)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(baseline, "causal_attention", spy)
        model(tokens)
    q, k, _ = (split_heads(t, 2) for t in seen["qkv"].chunk(3, dim=-1))
    positions = torch.arange(9)
    assert torch.equal(rotated["q"], apply_rotary(q, positions))
    assert torch.equal(rotated["k"], apply_rotary(k, positions))


def test_a_rotary_block_without_its_table_is_rejected():
    model = FullAttentionTransformer(FullAttentionConfig(vocab_size=11, dim=16, heads=2, depth=1))
    with pytest.raises(ValueError, match=r"rotation=\(cos, sin\)"):
        model.blocks[0](torch.zeros(1, 3, 16))
