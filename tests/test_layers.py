"""The feed-forward MLP and the parameter count every model here shares."""

import torch
from torch import nn

from mac_minimal.layers import FeedForward, num_parameters


def test_feed_forward_is_linear_gelu_linear():
    ffn = FeedForward(6, 10).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    first, last = ffn[0], ffn[2]
    expected = nn.functional.gelu(x @ first.weight.T + first.bias) @ last.weight.T + last.bias
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)
    assert FeedForward(6, 10, out_dim=4)(x.float()).shape == (2, 3, 4)


def test_feed_forward_has_the_parameters_of_a_plain_sequential():
    """Same names, shapes, order and, from the same seed, the same initial values: the models
    that use it keep their state_dict keys and their initialisation."""
    torch.manual_seed(0)
    ffn = FeedForward(6, 10)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 10), nn.GELU(), nn.Linear(10, 6))
    assert list(ffn.state_dict()) == list(plain.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for a, b in zip(ffn.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)


def test_num_parameters_counts_every_scalar_once():
    layer = nn.Linear(3, 4)                                          # 12 weights + 4 biases
    assert num_parameters(layer) == 16
    shared = nn.Sequential(layer, layer)                             # the same parameters twice
    assert num_parameters(shared) == 16
    assert num_parameters(FeedForward(6, 10)) == 6 * 10 + 10 + 10 * 6 + 6
