"""The MAC transformer: causality, memory across segments, streaming == one call, gradients, errors."""

import pytest
import torch

from mac_minimal.layers import num_parameters
from mac_minimal.mac_attention import COMBINES
from mac_minimal.model import MACConfig, MACState, MACTransformer, state_nbytes
from mac_minimal.neural_memory import NeuralMemoryConfig

from conv_taps import random_taps

V, C = 16, 4


def make(use_memory: bool = True, combine: str = "sum", seed: int = 0, conv_size: int = 0, **kw) -> MACTransformer:
    """A small float64 model; the memory scale starts at 0.5, not 0, so eq. (25)'s memory term takes part.
    ``conv_size``: the memory's convolution, its taps random (not the identity it starts as)."""
    kw.setdefault("memory_scale_init", 0.5)
    torch.manual_seed(seed)
    memory = NeuralMemoryConfig(chunk_size=3, max_lr=0.03, conv_size=conv_size)
    cfg = MACConfig(vocab_size=V, dim=16, depth=2, heads=2, segment_len=C, num_persistent=2, combine=combine,
                    use_memory=use_memory, memory=memory, **kw)
    return random_taps(MACTransformer(cfg).double())


def tokens(n: int = 14, b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("use_memory,conv_size,memory_input",
                         [(True, 0, "output"), (False, 0, "output"), (True, 3, "output"), (True, 3, "input")])
def test_causal_at_every_position(use_memory, conv_size, memory_input):
    """Positions 0..12 cover: inside a segment, segment boundaries (3|4, 7|8, 11|12), three segments
    back, and a last segment that is not full (n = 14, segment_len = 4); also with the memory's
    convolution, whose window crosses segment edges, and with the memory writing the layer's input."""
    model = make(use_memory, conv_size=conv_size, memory_input=memory_input)
    t = tokens()
    logits, _ = model(t)
    gen = torch.Generator().manual_seed(2)
    for j in range(t.shape[1] - 1):
        t2 = t.clone()
        t2[:, j + 1:] = (t[:, j + 1:] + torch.randint(1, V, t[:, j + 1:].shape, generator=gen)) % V
        logits2, _ = model(t2)
        assert torch.equal(logits2[:, :j + 1], logits[:, :j + 1]), f"position {j} sees the future"
        assert not torch.equal(logits2[:, j + 1:], logits[:, j + 1:])


@pytest.mark.parametrize("combine", COMBINES)
def test_memory_carries_segment_one_to_segment_three(combine):
    """Attention is segment-local, so only the memory can carry segment 1 into segment 3."""
    t = tokens(12)
    t2 = t.clone()
    t2[:, :C] = (t[:, :C] + 1) % V                                       # change segment 1 only
    with_memory = make(True, combine)
    a, b = with_memory(t)[0], with_memory(t2)[0]
    assert (a[:, 2 * C:] - b[:, 2 * C:]).abs().min() > 0                 # every logit of segment 3 moves
    without = make(False)
    a, b = without(t)[0], without(t2)[0]
    torch.testing.assert_close(a[:, C:], b[:, C:], rtol=0, atol=0)      # segments 2, 3: untouched


@pytest.mark.parametrize("use_memory,conv_size,memory_input",
                         [(True, 0, "output"), (False, 0, "output"), (True, 3, "output"), (True, 3, "input")])
@pytest.mark.parametrize("cuts", [list(range(15)), [0, 3, 4, 5, 11, 14], [0, 7, 14], [0, 1, 9, 14]])
def test_streaming_equals_one_call(use_memory, conv_size, memory_input, cuts):
    model = make(use_memory, conv_size=conv_size, memory_input=memory_input)
    t = tokens()
    whole, end = model(t)
    state, pieces = None, []
    for a, b in zip(cuts, cuts[1:]):
        logits, state = model(t[:, a:b], state)
        pieces.append(logits)
        assert state.position == b
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=1e-10, atol=1e-10)
    # and the two states continue the text identically
    more = tokens(6, seed=3)
    torch.testing.assert_close(model(more, state)[0], model(more, end)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("use_memory,combine", [(True, "sum"), (True, "gate"), (True, "mlp"), (False, "sum")])
def test_every_parameter_gets_a_gradient(use_memory, combine):
    model = make(use_memory, combine)
    logits, _ = model(tokens(10))
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_parameter_count_without_memory():
    with_memory, without = make(True), make(False)
    memory = sum(num_parameters(block.attn.memory) + block.attn.memory_scale.numel()
                 for block in with_memory.blocks)
    assert with_memory.num_parameters() - without.num_parameters() == memory
    assert without.num_parameters() == num_parameters(without)


def test_state_size_is_bounded():
    model = make()
    t = tokens(40, b=1)
    sizes, state = [], None
    for i in range(t.shape[1]):
        _, state = model(t[:, i:i + 1], state)
        sizes.append(state_nbytes(state))
    at_boundaries = sizes[C - 1::C]                                       # after each full segment
    assert len(set(at_boundaries)) == 1
    assert max(sizes) == max(sizes[:C])                                   # never more than in segment 1
    assert isinstance(state, MACState) and state.position == 40


def test_generate():
    model = make()
    prompt = tokens(5)
    out = model.generate(prompt, 7, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 12) and out.dtype == torch.int64
    assert torch.equal(out[:, :5], prompt)
    again = model.generate(prompt, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    greedy = model.generate(prompt, 7, temperature=0.0)
    logits, _ = model(greedy)                                             # one full pass over the result
    assert torch.equal(greedy[:, 5:], logits[:, 4:-1].argmax(-1))         # each new token = argmax so far
    assert torch.equal(model.generate(prompt, 7, top_k=1), greedy)
    assert model.generate(prompt, 7, top_k=3, generator=torch.Generator().manual_seed(1)).shape == (2, 12)
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_generate_errors():
    model = make()
    with pytest.raises(ValueError, match=r"max_new_tokens.*int >= 0.*-1"):
        model.generate(tokens(3), -1)
    with pytest.raises(ValueError, match=r"temperature.*>= 0.*-1\.0"):
        model.generate(tokens(3), 2, temperature=-1.0)
    with pytest.raises(ValueError, match=r"top_k.*int >= 1.*0"):
        model.generate(tokens(3), 2, top_k=0)


def test_input_errors():
    """Each message says what was expected and what was given."""
    model = make()
    with pytest.raises(TypeError, match=r"int64.*float32"):
        model(torch.zeros(2, 3))
    with pytest.raises(TypeError, match=r"int64.*int32"):
        model(torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"int64.*list"):
        model([[1, 2]])
    with pytest.raises(IndexError, match=r"vocab_size=16.*\[0, 16\]"):
        model(torch.tensor([[0, 16]]))
    with pytest.raises(IndexError, match=r"vocab_size=16.*\[-1, 3\]"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match=r"\(b, n\).*>= 1.*\(2, 0\)"):
        model(torch.zeros(2, 0, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(b, n\).*\(5,\)"):
        model(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(b, n\).*\(1, 2, 3\)"):
        model(torch.zeros(1, 2, 3, dtype=torch.int64))
    _, state = model(tokens(3))
    with pytest.raises(ValueError, match=r"batch size 1.*batch size 2"):
        model(tokens(3, b=1), state)
    with pytest.raises(ValueError, match=r"MACState.*2 layer states"):
        model(tokens(3), state.layers[0])


def test_config_errors():
    with pytest.raises(ValueError, match=r"segment_len.*int >= 1.*0"):
        MACConfig(segment_len=0)
    with pytest.raises(ValueError, match=r"combine.*'sum'.*'product'"):
        MACConfig(combine="product")
    with pytest.raises(ValueError, match=r"depth.*int >= 1.*0"):
        MACConfig(depth=0)
    with pytest.raises(ValueError, match=r"num_persistent.*int >= 0.*-1"):
        MACConfig(num_persistent=-1)
    with pytest.raises(TypeError, match=r"MACConfig.*object"):
        MACTransformer(object())
    assert MACTransformer().config == MACConfig()


def test_config_is_one_tree():
    """A MACConfig is every block's MACAttentionConfig (no field copied), its memory nested."""
    cfg = MACConfig(dim=16, heads=2, segment_len=C, memory=NeuralMemoryConfig(chunk_size=3, max_lr=0.05))
    model = MACTransformer(cfg)
    assert all(block.attn.config is cfg for block in model.blocks)
    assert all(block.attn.memory.config == NeuralMemoryConfig(dim=16, chunk_size=3, max_lr=0.05)
               for block in model.blocks)
