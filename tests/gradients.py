"""Shared by the tests that hold a fast form equal to its reference, gradients included."""

import torch
from torch.testing import assert_close


def probe_gradients(outputs: list[torch.Tensor], inputs: list[torch.Tensor], seed: int = 11) -> tuple[torch.Tensor, ...]:
    """Gradients with respect to ``inputs`` of one fixed random projection of ``outputs``,
    ``sum_o <o, r_o>`` with ``r_o ~ N(0, 1)`` drawn from ``seed``: the same probe for two forms, so
    equal gradients here mean equal vector-Jacobian products for a random vector. The graph is
    kept, so one reference can be compared with several forms."""
    generator = torch.Generator().manual_seed(seed)
    total = sum((o * torch.randn(o.shape, dtype=o.dtype, generator=generator)).sum() for o in outputs)
    return torch.autograd.grad(total, inputs, retain_graph=True, materialize_grads=True)  # a reference may be reused


def assert_same_values_and_gradients(outputs: list[torch.Tensor], reference: list[torch.Tensor],
                                     inputs: list[torch.Tensor], **tolerance: float) -> None:
    """``outputs`` equal ``reference`` one by one, and so do their gradients (:func:`probe_gradients`)
    with respect to every tensor of ``inputs``."""
    assert len(outputs) == len(reference)
    for got, expected in zip(outputs, reference):
        assert_close(got, expected, **tolerance)
    for got, expected in zip(probe_gradients(outputs, inputs), probe_gradients(reference, inputs)):
        assert_close(got, expected, **tolerance)
