"""The hybrid MM-Rec block equals the sequential MMRecBlock in float64, gradients included."""

import pytest
import torch
from torch.testing import assert_close

from mac_minimal.hybrid import HybridMMRecBlock, hybrid_forward
from mac_minimal.recurrence import MMRecBlock, MMRecConfig

F64 = torch.float64
CONFIGS = [dict(dim=8, num_short_slots=3, num_long_slots=2),
           dict(dim=6, num_short_slots=5, num_long_slots=4, long_write_rate=0.3),
           dict(dim=4, num_short_slots=1, num_long_slots=1, long_write_rate=1.0)]


def make_block(**kw) -> MMRecBlock:
    torch.manual_seed(0)
    return MMRecBlock(MMRecConfig(**kw)).to(F64)


def assert_states_equal(s1, s2):
    assert s1.step == s2.step
    assert s1.memory.num_writes == s2.memory.num_writes
    assert_close(s1.h, s2.h)
    assert_close(s1.decay, s2.decay)
    for bank in ("short", "long"):
        for t1, t2 in zip(s1.memory.get_bank(bank), s2.memory.get_bank(bank)):
            assert_close(t1, t2)


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("n", [1, 2, 7, 12])
def test_equals_sequential_block(kw, n):
    block = make_block(**kw)
    x = torch.randn(2, n, kw["dim"], dtype=F64)
    y, state = block(x)
    y_h, state_h = hybrid_forward(block, x)
    assert_close(y_h, y, rtol=1e-12, atol=1e-12)
    assert_states_equal(state_h, state)


@pytest.mark.parametrize("split", [1, 3, 5, 8])
def test_state_carried_across_calls_equals_one_call(split):
    block = make_block(**CONFIGS[1])
    x = torch.randn(2, 13, 6, dtype=F64)
    y, state = block(x)
    y1, s1 = hybrid_forward(block, x[:, :split])
    y2, s2 = hybrid_forward(block, x[:, split:], s1)
    assert_close(torch.cat([y1, y2], 1), y)
    assert_states_equal(s2, state)
    # mixing the two forms mid-sequence works too: they share one state format
    y_seq, s_seq = block(x[:, :split])
    y_hyb, s_hyb = hybrid_forward(block, x[:, split:], s_seq)
    assert_close(torch.cat([y_seq, y_hyb], 1), y)
    assert_states_equal(s_hyb, state)


def test_gradients_equal_sequential_block():
    block = make_block(**CONFIGS[0])
    x = torch.randn(2, 9, 8, dtype=F64)
    weight = torch.randn(2, 9, 8, dtype=F64)
    grads = []
    for fn in (block, lambda x_: hybrid_forward(block, x_)):
        x_req = x.clone().requires_grad_()
        y, state = fn(x_req)
        loss = (y * weight).sum() + state.h.square().sum() + state.memory.get_bank("long")[0].sum()
        params = [x_req] + list(block.parameters())
        grads.append(torch.autograd.grad(loss, params))
    for g_seq, g_hyb in zip(*grads):
        assert_close(g_hyb, g_seq, rtol=1e-10, atol=1e-12)


def test_causal():
    block = make_block(**CONFIGS[0])
    x = torch.randn(2, 10, 8, dtype=F64)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(2, 4, 8, dtype=F64)
    y, _ = hybrid_forward(block, x)
    y2, _ = hybrid_forward(block, x2)
    assert torch.equal(y[:, :6], y2[:, :6])
    assert not torch.equal(y[:, 6:], y2[:, 6:])


def test_hybrid_block_shares_the_state_dict():
    block = make_block(**CONFIGS[0])
    hybrid = HybridMMRecBlock(block.config).to(F64)
    hybrid.load_state_dict(block.state_dict())
    x = torch.randn(1, 6, 8, dtype=F64)
    assert_close(hybrid(x)[0], block(x)[0])
    assert_close(hybrid.step(x[:, 0], hybrid.project(x).at(0), hybrid.init_state(1, dtype=F64))[0],
                 block(x[:, :1])[0][:, 0])


def test_clear_errors():
    block = make_block(**CONFIGS[0])
    with pytest.raises(ValueError, match=r"x must have shape \(batch, seq, dim=8\)"):
        hybrid_forward(block, torch.randn(2, 5, 7, dtype=F64))
    with pytest.raises(ValueError, match="at least one step"):
        hybrid_forward(block, torch.randn(2, 0, 8, dtype=F64))
    with pytest.raises(ValueError, match=r"state.h must have shape \(batch=3, dim=8\)"):
        hybrid_forward(block, torch.randn(3, 5, 8, dtype=F64), block.init_state(2, dtype=F64))
