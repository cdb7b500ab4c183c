"""Random taps for the memory's convolution in tests: it starts as the identity, which would hide a
window that reads the wrong tokens."""

import torch

TAPS = ("conv_q", "conv_k", "conv_v")


def random_taps(model: torch.nn.Module, seed: int = 7) -> torch.nn.Module:
    """Every memory convolution of ``model`` (``NeuralMemory.conv_q``, ``conv_k``, ``conv_v``) given
    taps drawn from N(0, 1); returns ``model``. A model without one is returned unchanged."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, taps in model.named_parameters():
            if name.split(".")[-1] in TAPS:
                taps.copy_(torch.randn(taps.shape, generator=generator, dtype=taps.dtype))
    return model
