"""Chapter 2: the MM-Rec block, checked against a plain reference written from the formulas."""

import pytest
import torch
from torch.testing import assert_close

from mac_minimal.recurrence import MMRecBlock, MMRecConfig, MMRecState, Projections

F64 = torch.float64


def make_block(**kw) -> MMRecBlock:
    torch.manual_seed(0)
    return MMRecBlock(MMRecConfig(**kw)).to(F64)


def reference(block: MMRecBlock, x: torch.Tensor) -> torch.Tensor:
    """The MM-Rec design's nine steps written out with the raw weights, one token at a time."""
    cfg = block.config
    b, n, d = x.shape
    s_short, s_long, r = cfg.num_short_slots, cfg.num_long_slots, cfg.long_write_rate

    def rms(u, weight):
        return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + torch.finfo(u.dtype).eps) * weight

    h = torch.zeros(b, d, dtype=x.dtype)
    k_short, v_short = torch.zeros(b, s_short, d, dtype=x.dtype), torch.zeros(b, s_short, d, dtype=x.dtype)
    k_long, v_long = torch.zeros(b, s_long, d, dtype=x.dtype), torch.zeros(b, s_long, d, dtype=x.dtype)
    ys = []
    for t in range(n):
        xn = rms(x[:, t], block.norm.weight)
        q, k, v = xn @ block.W_q.weight.T, xn @ block.W_k.weight.T, xn @ block.W_v.weight.T
        z = xn @ block.W_z.weight.T + block.W_z.bias
        gamma = torch.sigmoid(xn @ block.W_gamma.weight.T + block.W_gamma.bias)
        h = z * torch.sigmoid(h @ block.W_g.weight.T + block.W_g.bias) + gamma * h
        keys, values = torch.cat([k_short, k_long], 1), torch.cat([v_short, v_long], 1)
        att = torch.softmax(torch.einsum("bd,bsd->bs", q, keys) / d**0.5, -1)
        u = x[:, t] + h + torch.einsum("bs,bsd->bd", att, values) @ block.W_o.weight.T
        y = u + block.ffn(rms(u, block.ffn_norm.weight))
        ys.append(y)
        k_short, v_short = k_short.clone(), v_short.clone()
        k_short[:, t % s_short], v_short[:, t % s_short] = h, h
        old_k, old_v = k_long[:, t % s_long], v_long[:, t % s_long]
        k_long, v_long = k_long.clone(), v_long.clone()
        k_long[:, t % s_long], v_long[:, t % s_long] = (1 - r) * old_k + r * k, (1 - r) * old_v + r * v
    return torch.stack(ys, 1)


def test_shapes_and_final_state():
    block = make_block(dim=8, num_short_slots=3, num_long_slots=2)
    x = torch.randn(2, 7, 8, dtype=F64)
    y, state = block(x)
    assert y.shape == (2, 7, 8)
    assert state.h.shape == state.decay.shape == (2, 8) and state.step == 7
    assert state.memory.num_writes == {"short": 7, "long": 7}
    assert state.memory.get_bank("short")[0].shape == (2, 3, 8)
    proj = block.project(x)
    assert isinstance(proj, Projections) and all(p.shape == (2, 7, 8) for p in proj)
    assert all(p.shape == (2, 8) for p in proj.at(3))
    assert bool(((proj.gamma > 0) & (proj.gamma < 1)).all())


def test_block_equals_plain_reference():
    block = make_block(dim=8, num_short_slots=3, num_long_slots=2, long_write_rate=0.3)
    x = torch.randn(2, 9, 8, dtype=F64)
    assert_close(block(x)[0], reference(block, x), rtol=1e-12, atol=1e-12)


def test_short_bank_holds_h_and_long_bank_holds_k_v():
    block = make_block(dim=8, num_short_slots=4, num_long_slots=16, long_write_rate=1.0)
    x = torch.randn(1, 6, 8, dtype=F64)
    proj = block.project(x)
    state = block.init_state(1, dtype=F64)
    for t in range(6):
        _, state = block.step(x[:, t], proj.at(t), state)
        assert_close(state.memory.get_state_at_step("short", t), (state.h, state.h))
        assert_close(state.memory.get_state_at_step("long", t), (proj.k[:, t], proj.v[:, t]))


@pytest.mark.parametrize("split", [1, 5, 12])
def test_state_carried_across_calls_equals_one_call(split):
    block = make_block(dim=8, num_short_slots=3, num_long_slots=2)
    x = torch.randn(2, 13, 8, dtype=F64)
    y, state = block(x)
    y1, state1 = block(x[:, :split])
    y2, state2 = block(x[:, split:], state1)
    assert_close(torch.cat([y1, y2], 1), y, rtol=1e-12, atol=1e-12)
    assert state2.step == state.step == 13
    for a, b in [(state2.h, state.h), (state2.decay, state.decay)]:
        assert_close(a, b, rtol=1e-12, atol=1e-12)
    for bank in ("short", "long"):
        assert_close(state2.memory.get_bank(bank), state.memory.get_bank(bank), rtol=1e-12, atol=1e-12)


def test_token_by_token_calls_equal_one_call_and_leave_the_input_state_alone():
    block = make_block(dim=8)
    x = torch.randn(1, 6, 8, dtype=F64)
    y, _ = block(x)
    state, ys = None, []
    for t in range(6):
        y_t, state = block(x[:, t:t + 1], state)
        ys.append(y_t)
    assert_close(torch.cat(ys, 1), y, rtol=1e-12, atol=1e-12)
    _, mid = block(x[:, :3])
    first, _ = block(x[:, 3:], mid)
    second, _ = block(x[:, 3:], mid)  # the same state a second time: forward did not change it
    assert mid.step == 3 and mid.memory.num_writes == {"short": 3, "long": 3}
    assert_close(first, second, rtol=0, atol=0)
    assert_close(first, y[:, 3:], rtol=1e-12, atol=1e-12)


def test_decay_is_the_cumulative_product_of_gamma():
    block = make_block(dim=8)
    x = torch.randn(2, 10, 8, dtype=F64)
    _, state = block(x)
    assert_close(state.decay, torch.cumprod(block.project(x).gamma, dim=1)[:, -1])


def test_causal_future_inputs_do_not_change_past_outputs():
    block = make_block(dim=8, num_short_slots=3, num_long_slots=2)
    x = torch.randn(2, 12, 8, dtype=F64)
    y, _ = block(x)
    for j in (0, 4, 10):
        x2 = x.clone()
        x2[:, j + 1:] = torch.randn_like(x2[:, j + 1:])
        y2, _ = block(x2)
        assert_close(y2[:, :j + 1], y[:, :j + 1], rtol=0, atol=0)
        assert not torch.allclose(y2[:, j + 1:], y[:, j + 1:])


def test_every_parameter_gets_a_gradient():
    block = make_block(dim=8)
    x = torch.randn(2, 6, 8, dtype=F64, requires_grad=True)
    block(x)[0].square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_gradients_match_finite_differences():
    block = make_block(dim=4, num_short_slots=2, num_long_slots=2, ffn_mult=1)
    x = torch.randn(1, 4, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: block(inp)[0], (x,))


def test_clear_errors():
    """Each message says what was expected and what was given."""
    block = make_block(dim=8)
    with pytest.raises(ValueError, match=r"x.*dim=8.*\(5, 8\)"):
        block(torch.zeros(5, 8, dtype=F64))
    with pytest.raises(ValueError, match=r"x.*dim=8.*\(1, 5, 6\)"):
        block(torch.zeros(1, 5, 6, dtype=F64))
    with pytest.raises(ValueError, match=r"at least one step.*\(1, 0, 8\)"):
        block(torch.zeros(1, 0, 8, dtype=F64))
    _, state = block(torch.zeros(2, 3, 8, dtype=F64))
    assert isinstance(state, MMRecState)
    with pytest.raises(ValueError, match=r"state.h.*batch=3, dim=8.*\(2, 8\)"):
        block(torch.zeros(3, 1, 8, dtype=F64), state)
    with pytest.raises(ValueError, match=r"ffn_mult.*int >= 1.*0"):
        MMRecConfig(ffn_mult=0)
    with pytest.raises(ValueError, match=r"long_write_rate.*\(0, 1\].*1\.5"):
        MMRecConfig(long_write_rate=1.5)
