"""Looking inside a MAC: the rates are those of the y the memory really receives, the attention
shares at the answer add up to 1, and no hook is left behind."""

import pytest
import torch

from mac_minimal.inspect_memory import answer_attention, memory_rates, momentum_capped
from mac_minimal.model import MACConfig, MACTransformer
from mac_minimal.neural_memory import NeuralMemoryConfig

V, C, P = 20, 4, 2


def make(use_memory: bool = True) -> MACTransformer:
    torch.manual_seed(0)
    cfg = MACConfig(vocab_size=V, dim=16, depth=2, heads=2, segment_len=C, num_persistent=P,
                    use_memory=use_memory, memory_scale_init=0.5,
                    memory=NeuralMemoryConfig(chunk_size=3, max_lr=0.03))
    return MACTransformer(cfg).double()


def tokens(n: int, b: int = 2) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(1))


def no_hooks(model: MACTransformer) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@torch.no_grad()
def by_hand(model: MACTransformer, t: torch.Tensor, begin: int, end: int) -> list[tuple]:
    """Per layer, the (x, state, y) of MAC attention on the segment t[:, begin:end], independently
    of any hook: the state is the model's after streaming t[:, :begin], x each layer's normalised
    input, y eq. (23)'s output (what eq. (24) writes)."""
    state = model(t[:, :begin])[1] if begin > 0 else model.init_state(t.shape[0])
    x, out = model.embed(t[:, begin:end]), []
    for block, layer_state in zip(model.blocks, state.layers):
        xn = block.norm_attn(x)
        h = block.attn.retrieve(xn, layer_state)                       # (21)
        y, _ = block.attn.attend(xn, h, layer_state)                   # (22)-(23)
        out.append((xn, layer_state, y))
        x, _ = block(x, layer_state)
    return out


@pytest.mark.parametrize("n", [16, 14])
def test_memory_rates_are_the_rates_of_the_written_y(n):
    model, t = make(), tokens(n)
    rates = memory_rates(model, t)
    assert len(rates) == 2
    for layer in rates:
        assert set(layer) == {"theta", "eta", "alpha"}
        assert all(r.shape == (2, n) for r in layer.values())
        assert bool(((0 < layer["theta"]) & (layer["theta"] < 0.03)).all())
        for name in ("eta", "alpha"):
            assert bool(((0 < layer[name]) & (layer[name] < 1)).all())
    for begin in range(0, n, C):
        end = min(n, begin + C)
        for layer, (_, _, y) in enumerate(by_hand(model, t, begin, end)):
            theta, eta, alpha = model.blocks[layer].attn.memory.rates(y)
            torch.testing.assert_close(rates[layer]["theta"][:, begin:end], theta)
            torch.testing.assert_close(rates[layer]["eta"][:, begin:end], eta)
            torch.testing.assert_close(rates[layer]["alpha"][:, begin:end], alpha)


def test_memory_rates_first_segment_from_the_embedding():
    """Layer 0's first segment written out from the token embeddings, fresh memory."""
    model, t = make(), tokens(12)
    attn = model.blocks[0].attn
    with torch.no_grad():
        x = model.blocks[0].norm_attn(model.embed(t[:, :C]))
        state = attn.init_state(2)
        y, _ = attn.attend(x, attn.retrieve(x, state), state)
        theta, _, _ = attn.memory.rates(y)
    torch.testing.assert_close(memory_rates(model, t)[0]["theta"][:, :C], theta)


@pytest.mark.parametrize("n", [16, 14, 3])
def test_answer_attention_shares_at_the_last_position(n):
    model, t = make(), tokens(n)
    shares = answer_attention(model, t)
    assert len(shares) == 2
    begin = (n - 1) // C * C
    for layer, (share, (x, state, _)) in enumerate(zip(shares, by_hand(model, t, begin, n))):
        assert set(share) == {"persistent", "retrieved", "segment"}
        assert abs(sum(share.values()) - 1) < 1e-9
        assert all(0 < v < 1 for v in share.values())
        with torch.no_grad():
            weights = model.blocks[layer].attn.attention_weights(x, state)[:, :, -1].mean(dim=(0, 1))
        c = n - begin
        assert weights.shape == (P + 2 * c,)
        assert share["persistent"] == pytest.approx(float(weights[:P].sum()))
        assert share["retrieved"] == pytest.approx(float(weights[P:P + c].sum()))
        assert share["segment"] == pytest.approx(float(weights[P + c:].sum()))


def test_hooks_are_removed_and_a_second_call_agrees():
    model, t = make(), tokens(10)
    first_rates, first_shares = memory_rates(model, t), answer_attention(model, t)
    assert no_hooks(model)
    second_rates, second_shares = memory_rates(model, t), answer_attention(model, t)
    assert no_hooks(model)
    assert first_shares == second_shares
    for a, b in zip(first_rates, second_rates):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_hooks_are_removed_on_error():
    model = make()
    bad = torch.full((1, 5), V, dtype=torch.int64)                   # an id outside the vocabulary
    for inspect in (memory_rates, answer_attention):
        with pytest.raises(IndexError):
            inspect(model, bad)
        assert no_hooks(model)


def test_clear_errors():
    with pytest.raises(ValueError, match="no neural memory"):
        memory_rates(make(use_memory=False), tokens(8))
    with pytest.raises(ValueError, match="no neural memory"):
        answer_attention(make(use_memory=False), tokens(8))
    model = make()
    for bad in (tokens(8).int(), tokens(8)[0], tokens(8).double(), [[1, 2]]):
        with pytest.raises(ValueError, match=r"int64 tensor \(b, n\)"):
            memory_rates(model, bad)
        with pytest.raises(ValueError, match=r"int64 tensor \(b, n\)"):
            answer_attention(model, bad)


def test_momentum_capped_clips_eta_in_the_given_layers_and_undoes_itself():
    torch.manual_seed(0)
    model = MACTransformer(MACConfig(vocab_size=20, dim=16, heads=2, segment_len=4)).eval()
    tokens = torch.randint(0, 20, (2, 12))
    with torch.no_grad():
        plain, _ = model(tokens)
        with momentum_capped(model, 1.0):                       # sigmoid < 1: nothing clipped
            assert torch.equal(model(tokens)[0], plain)
        with momentum_capped(model, 0.5, [1]):                  # eta starts near 0.88
            assert not torch.allclose(model(tokens)[0], plain)
            x = torch.randn(1, 3, 16)
            assert model.blocks[1].attn.memory.rates(x)[1].max() <= 0.5
            assert model.blocks[0].attn.memory.rates(x)[1].min() > 0.5
        assert torch.equal(model(tokens)[0], plain)             # undone on exit
    with pytest.raises(ValueError, match="cap must be > 0 and <= 1, got 1.5"):
        with momentum_capped(model, 1.5):
            pass
    with pytest.raises(ValueError, match=r"layers must be indices in \[0, 2\), got \[2\]"):
        with momentum_capped(model, 0.9, [2]):
            pass
