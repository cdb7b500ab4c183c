"""The parallel scans equal the plain loop in float64, values and gradients (chapter 3)."""

import pytest
import torch

from mac_minimal.scan import combine, scan_doubling, scan_sequential
from mac_minimal.scan_kernel import associative_scan, chunked_scan, default_leaf_size

FAST = {
    "associative": associative_scan,
    "associative_leaf16": lambda a, b, h0=None: associative_scan(a, b, h0, leaf_size=16),
    "associative_leaf1": lambda a, b, h0=None: associative_scan(a, b, h0, leaf_size=1),  # textbook Blelloch
    "associative_leaf3": lambda a, b, h0=None: associative_scan(a, b, h0, leaf_size=3),
    "chunked": chunked_scan,
    "chunked_c3": lambda a, b, h0=None: chunked_scan(a, b, h0, chunk_size=3),
    "doubling": scan_doubling,                                  # the readable Hillis-Steele version
}
LENGTHS = [1, 2, 3, 5, 8, 13, 16, 33, 100]


def make(a_shape, b_shape, seed=0, zeros=True):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(a_shape, generator=g, dtype=torch.float64)  # negatives included
    if zeros and a.shape[1] > 2:
        a[:, 2::5] = 0.0  # zeros in a: the log-space trick would fail here
    b = torch.randn(b_shape, generator=g, dtype=torch.float64)
    h0 = torch.randn((b_shape[0],) + tuple(b_shape[2:]), generator=g, dtype=torch.float64)
    return a, b, h0


def test_sequential_matches_hand_loop():
    a, b, h0 = make((2, 6, 3), (2, 6, 3))
    h, expect = h0, []
    for t in range(6):
        h = a[:, t] * h + b[:, t]
        expect.append(h)
    torch.testing.assert_close(scan_sequential(a, b, h0), torch.stack(expect, 1))
    torch.testing.assert_close(scan_sequential(a, b)[:, 0], b[:, 0])  # h0 defaults to zeros


def test_combine_is_associative_and_composes_steps():
    g = torch.Generator().manual_seed(3)
    x, y, z = [tuple(torch.randn(4, dtype=torch.float64, generator=g) for _ in range(2)) for _ in range(3)]
    for left, right in zip(combine(combine(x, y), z), combine(x, combine(y, z))):
        torch.testing.assert_close(left, right)
    h = torch.randn(4, dtype=torch.float64, generator=g)
    a, b = combine(x, y)
    torch.testing.assert_close(a * h + b, y[0] * (x[0] * h + x[1]) + y[1])


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("with_h0", [False, True])
def test_values_match_loop(name, n, with_h0):
    a, b, h0 = make((2, n, 4), (2, n, 4), seed=n)
    h0 = h0 if with_h0 else None
    torch.testing.assert_close(FAST[name](a, b, h0), scan_sequential(a, b, h0), rtol=1e-12, atol=1e-12)


def grads(fn, a, b, h0, weight):
    ins = [a.clone().requires_grad_(), b.clone().requires_grad_()]
    ins.append(None if h0 is None else h0.clone().requires_grad_())
    out = fn(*ins)
    leaves = [t for t in ins if t is not None]
    return (out,) + torch.autograd.grad((out * weight).sum(), leaves)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("n", [1, 7, 16, 37])
@pytest.mark.parametrize("a_shape", ["full", "broadcast"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_gradients_match_loop(name, n, a_shape, with_h0):
    b_shape = (2, n, 3, 4)  # trailing dims of any number, as for a matrix-valued memory
    a, b, h0 = make(b_shape if a_shape == "full" else (2, n, 1, 1), b_shape, seed=n)
    h0 = h0 if with_h0 else None
    weight = torch.randn(b_shape, dtype=torch.float64)
    expect = grads(scan_sequential, a, b, h0, weight)
    got = grads(FAST[name], a, b, h0, weight)
    assert len(got) == len(expect) == (4 if with_h0 else 3)
    for x, y in zip(got, expect):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", FAST)
def test_gradcheck_and_second_derivatives(name):
    fn = FAST[name]
    a, b, h0 = make((2, 11, 3), (2, 11, 3))
    ins = tuple(t.requires_grad_() for t in (a, b, h0))
    assert torch.autograd.gradcheck(fn, ins)
    assert torch.autograd.gradgradcheck(fn, ins)


def test_float32_and_batch_broadcast():
    a, b, h0 = make((1, 50, 8), (3, 50, 8), zeros=False)
    a = a.clamp(-1, 1)
    ref = scan_sequential(a, b, h0)
    for fn in (associative_scan, chunked_scan):
        torch.testing.assert_close(fn(a.float(), b.float(), h0.float()), ref.float(), rtol=1e-4, atol=1e-4)


def test_non_contiguous_inputs():
    a, b, h0 = make((2, 4, 9), (2, 4, 9))
    a_t, b_t = a.transpose(1, 2), b.transpose(1, 2)  # (2, 9, 4), not contiguous
    ref = scan_sequential(a_t, b_t)
    torch.testing.assert_close(associative_scan(a_t, b_t), ref)
    torch.testing.assert_close(chunked_scan(a_t, b_t), ref)


def test_causal():
    a, b, h0 = make((2, 20, 3), (2, 20, 3))
    b2, a2 = b.clone(), a.clone()
    b2[:, 12:] += 1.0
    a2[:, 12:] -= 2.0
    for fn in (scan_sequential, associative_scan, chunked_scan):
        assert torch.equal(fn(a, b, h0)[:, :12], fn(a2, b2, h0)[:, :12])


def test_state_carried_across_calls_equals_one_call():
    a, b, h0 = make((2, 30, 3), (2, 30, 3))
    whole = associative_scan(a, b, h0)
    first = associative_scan(a[:, :13], b[:, :13], h0)
    second = chunked_scan(a[:, 13:], b[:, 13:], first[:, -1])
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_inputs_not_modified():
    a, b, h0 = make((2, 9, 3), (2, 9, 3))
    copies = [t.clone() for t in (a, b, h0)]
    for fn in (associative_scan, chunked_scan):
        fn(a, b, h0)
    for t, c in zip((a, b, h0), copies):
        assert torch.equal(t, c)


@pytest.mark.parametrize("fn", [scan_sequential, associative_scan, chunked_scan])
def test_clear_errors(fn):
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"b must have shape \(batch, seq, \.\.\.\)"):
        fn(torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError, match=r"a must have the shape of b \(2, 5, 3\)"):
        fn(torch.randn(2, 4, 3), x)
    with pytest.raises(ValueError, match=r"a must have the shape of b \(2, 5, 3\)"):
        fn(torch.randn(2, 5, 2), x)
    with pytest.raises(ValueError, match=r"h0 must have shape \(batch, \.\.\.\) = \(2, 3\)"):
        fn(x, x, torch.randn(2, 5, 3))
    with pytest.raises(TypeError, match="one floating dtype"):
        fn(x.double(), x)
    with pytest.raises(ValueError, match="length >= 1"):
        fn(torch.randn(2, 0, 3), torch.randn(2, 0, 3))


def test_chunk_and_leaf_sizes_must_be_positive_ints():
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        chunked_scan(x, x, chunk_size=0)
    with pytest.raises(ValueError, match="leaf_size must be an int >= 1"):
        associative_scan(x, x, leaf_size=2.0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64])
def test_textbook_blelloch_every_small_length(n):
    a, b, h0 = make((1, n, 2), (1, n, 2), seed=n)
    torch.testing.assert_close(associative_scan(a, b, h0, leaf_size=1), scan_sequential(a, b, h0),
                               rtol=1e-12, atol=1e-12)


def test_default_leaf_size_grows_with_the_tensor():
    assert default_leaf_size(torch.empty(4, 1023, 256)) == 1
    assert default_leaf_size(torch.empty(4, 1024, 256)) == 16
    a, b, h0 = make((1, 1027, 1024), (1, 1027, 1024), zeros=False)  # 2**20 elements and more: leaves of 16
    a = a.clamp(-1, 1)
    torch.testing.assert_close(associative_scan(a, b, h0), scan_sequential(a, b, h0))
