"""Chapter 1: MemoryState (state + write rule) and read_memory (read rule)."""

from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from torch.testing import assert_close

from mac_minimal.memory_state import MemoryState, MemoryStateConfig, read_memory

F64 = torch.float64


def make_state(batch_size: int = 2, **kw) -> MemoryState:
    return MemoryState(MemoryStateConfig(**kw), batch_size, dtype=F64)


def test_initial_state_is_zeros_with_the_bank_shapes():
    state = make_state(3, dim=5, v_dim=7, num_short_slots=4, num_long_slots=2)
    k_s, v_s, k_l, v_l = state.get_initial_state(3)
    assert [tuple(t.shape) for t in (k_s, v_s, k_l, v_l)] == [(3, 4, 5), (3, 4, 7), (3, 2, 5), (3, 2, 7)]
    assert all(t.dtype == F64 and not t.any() for t in (k_s, v_s, k_l, v_l))
    assert_close(state.get_bank("short")[0], k_s)
    assert_close(state.get_bank("long")[1], v_l)


def test_short_bank_is_a_ring_buffer_of_the_last_steps():
    state = make_state(2, dim=3, v_dim=3, num_short_slots=4)
    ks, vs = torch.randn(2, 10, 3, dtype=F64), torch.randn(2, 10, 3, dtype=F64)
    for t in range(10):
        state.update_state_sequential("short", ks[:, t:t + 1], vs[:, t:t + 1], step=t)
    keys, values = state.get_bank("short")
    for t in range(6, 10):  # the last 4 steps, step t in slot t mod 4
        assert_close(keys[:, t % 4], ks[:, t])
        assert_close(state.get_state_at_step("short", t), (ks[:, t], vs[:, t]))


def test_long_bank_blends_with_its_write_rate():
    rate = 0.25
    state = make_state(1, dim=2, v_dim=2, num_long_slots=3, long_write_rate=rate)
    ks = torch.randn(1, 7, 2, dtype=F64)
    state.update_state_sequential("long", ks, 2 * ks, step=0)
    # slot 0 saw steps 0, 3, 6: weights r(1-r)^2, r(1-r), r
    expected = rate * (1 - rate) ** 2 * ks[:, 0] + rate * (1 - rate) * ks[:, 3] + rate * ks[:, 6]
    assert_close(state.get_bank("long")[0][:, 0], expected)
    assert_close(state.get_bank("long")[1][:, 0], 2 * expected)


def test_writing_a_chunk_equals_writing_step_by_step():
    ks, vs = torch.randn(2, 9, 4, dtype=F64), torch.randn(2, 9, 4, dtype=F64)
    whole, steps = make_state(dim=4, v_dim=4), make_state(dim=4, v_dim=4)
    for bank in ("short", "long"):
        whole.update_state_sequential(bank, ks, vs, step=0)
        for t in range(9):
            steps.update_state_sequential(bank, ks[:, t:t + 1], vs[:, t:t + 1], step=t)
        assert_close(whole.get_bank(bank), steps.get_bank(bank))
        assert whole.num_writes[bank] == steps.num_writes[bank] == 9


def test_two_dimensional_write_broadcasts_over_the_batch():
    k, v = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    flat, batched = make_state(2, dim=4, v_dim=4), make_state(2, dim=4, v_dim=4)
    flat.update_state_sequential("short", k, v, step=0)
    batched.update_state_sequential("short", k.expand(2, 3, 4), v.expand(2, 3, 4), step=0)
    assert_close(flat.get_bank("short"), batched.get_bank("short"))
    assert_close(flat.get_bank("short")[0][0], flat.get_bank("short")[0][1])


def test_writes_are_differentiable_and_copy_is_independent():
    state = make_state(1, dim=2, v_dim=2)
    k = torch.randn(1, 1, 2, dtype=F64, requires_grad=True)
    before = state.copy()
    state.update_state_sequential("long", k, k, step=0)
    state.get_bank("long")[1].sum().backward()
    assert_close(k.grad, torch.full_like(k, state.config.long_write_rate))
    assert not before.get_bank("long")[0].any() and before.num_writes["long"] == 0


def test_read_memory_is_softmax_attention():
    q, k, v = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 5, 4, dtype=F64), torch.randn(2, 5, 6, dtype=F64)
    out, weights = read_memory(q, k, v)
    expected_w = torch.softmax(torch.einsum("bmd,bsd->bms", q, k) / 2.0, dim=-1)
    assert_close(weights, expected_w)
    assert_close(out, torch.einsum("bms,bsv->bmv", expected_w, v))
    assert out.shape == (2, 3, 6)


def test_a_stored_key_retrieves_its_value():
    state = make_state(1, dim=16, v_dim=16, num_short_slots=8)
    ks = torch.nn.functional.normalize(torch.randn(1, 8, 16, dtype=F64), dim=-1) * 16
    vs = torch.randn(1, 8, 16, dtype=F64)
    state.update_state_sequential("short", ks, vs, step=0)
    out, weights = state.read(ks[:, 3:4], banks=("short",))
    assert weights[0, 0].argmax().item() == 3 and weights[0, 0, 3] > 0.99
    assert_close(out[:, 0], vs[:, 3], atol=0.05, rtol=0)


def test_empty_memory_reads_zeros_with_uniform_weights():
    state = make_state(2, dim=4, v_dim=4, num_short_slots=3, num_long_slots=2)
    out, weights = state.read(torch.randn(2, 1, 4, dtype=F64))
    assert not out.any()
    assert_close(weights, torch.full((2, 1, 5), 0.2, dtype=F64))


@contextmanager
def raises(kind: type[Exception], *fragments: str) -> Iterator[None]:
    """``pytest.raises(kind)`` whose message holds every fragment (the name, what was expected, what
    was given), whatever the wording around them."""
    with pytest.raises(kind) as info:
        yield
    missing = [fragment for fragment in fragments if fragment not in str(info.value)]
    assert not missing, f"{info.value!r} lacks {missing}"


def test_bad_bank_name_is_a_value_error():
    state = make_state()
    with raises(ValueError, "bank_type", "('short', 'long')", "'medium'"):
        state.update_state_sequential("medium", torch.zeros(1, 16, dtype=F64), torch.zeros(1, 16, dtype=F64), 0)
    with raises(ValueError, "bank_type", "('short', 'long')", "'Short'"):
        state.get_state_at_step("Short", 0)
    with raises(ValueError, "bank_type", "('short', 'long')", "'lng'"):
        state.read(torch.zeros(2, 1, 16, dtype=F64), banks=("short", "lng"))


def test_step_out_of_range_is_an_index_error():
    state = make_state(1, dim=2, v_dim=2, num_short_slots=2)
    one = torch.zeros(1, 2, dtype=F64)
    with raises(IndexError, "'short' bank", "is 0", "step=1"):
        state.update_state_sequential("short", one, one, step=1)
    with raises(IndexError, "step 0", "'short' bank", "nothing is written yet"):
        state.get_state_at_step("short", 0)
    for t in range(3):
        state.update_state_sequential("short", one, one, step=t)
    with raises(IndexError, "step 0", "'short' bank", "[1, 3)"):
        state.get_state_at_step("short", 0)
    with raises(IndexError, "step 3", "'short' bank", "[1, 3)"):
        state.get_state_at_step("short", 3)
    with raises(IndexError, "'short' bank", "is 3", "step=2"):
        state.update_state_sequential("short", one, one, step=2)


def test_wrong_shapes_and_dtypes_are_clear_errors():
    state = make_state(2, dim=4, v_dim=3)
    with raises(ValueError, "new_k", "(c, 4)", "(batch=2, c, 4)", "(1, 5)"):
        state.update_state_sequential("short", torch.zeros(1, 5, dtype=F64), torch.zeros(1, 3, dtype=F64), 0)
    with raises(ValueError, "new_v", "(c, 3)", "(batch=2, c, 3)", "(2, 1, 4)"):
        state.update_state_sequential("long", torch.zeros(2, 1, 4, dtype=F64), torch.zeros(2, 1, 4, dtype=F64), 0)
    with raises(ValueError, "new_k", "(batch=2, c, 4)", "(3, 1, 4)"):
        state.update_state_sequential("long", torch.zeros(3, 1, 4, dtype=F64), torch.zeros(3, 1, 3, dtype=F64), 0)
    with raises(ValueError, "new_k", "(c, 4)", "(4,)"):
        state.update_state_sequential("short", torch.zeros(4, dtype=F64), torch.zeros(3, dtype=F64), 0)
    with raises(ValueError, "new_k and new_v", "same number of steps", "2 and 1"):
        state.update_state_sequential("short", torch.zeros(2, 4, dtype=F64), torch.zeros(1, 3, dtype=F64), 0)
    with raises(TypeError, "new_k", "torch.float64", "torch.float32"):
        state.update_state_sequential("short", torch.zeros(1, 4), torch.zeros(1, 3), 0)
    with raises(ValueError, "query", "(b=2, m, d=4)", "(2, 1, 5)"):
        state.read(torch.zeros(2, 1, 5, dtype=F64))
    with raises(ValueError, "keys", "3-D", "(3, 4)"):
        read_memory(torch.zeros(1, 1, 4), torch.zeros(3, 4), torch.zeros(3, 4))
    with raises(ValueError, "values", "(b=1, s=3, v_dim)", "(1, 2, 4)"):
        read_memory(torch.zeros(1, 1, 4), torch.zeros(1, 3, 4), torch.zeros(1, 2, 4))
    with raises(ValueError, "batch_size", ">= 1", "got 0"):
        state.get_initial_state(0)


def test_bad_config_is_a_value_error():
    with raises(ValueError, "long_write_rate", "(0, 1]", "0.0"):
        MemoryStateConfig(long_write_rate=0.0)
    with raises(ValueError, "num_short_slots", ">= 1", "got 0"):
        MemoryStateConfig(num_short_slots=0)


def test_with_banks_is_a_bulk_write_that_checks_shapes():
    state = MemoryState(MemoryStateConfig(dim=4, num_short_slots=3, num_long_slots=2), batch_size=2)
    banks = {name: (k + 1.0, v + 2.0) for name, (k, v) in state.banks.items()}
    new = state.with_banks(banks, steps=5)
    assert new.num_writes == {"short": 5, "long": 5} and state.num_writes == {"short": 0, "long": 0}
    assert torch.equal(new.get_bank("long")[0], state.get_bank("long")[0] + 1.0)
    with pytest.raises(ValueError, match="must keep its shapes"):
        state.with_banks({**banks, "short": (banks["short"][0][:, :2], banks["short"][1])}, steps=1)
    with pytest.raises(ValueError, match="must have the keys"):
        state.with_banks({"short": banks["short"]}, steps=1)
