"""One call that makes a notebook deterministic, so that nbval can compare its outputs."""

import random

import torch


def setup_notebook(seed: int = 0, threads: int = 1) -> None:
    """Seed ``random`` and ``torch``, force deterministic kernels and fix the thread count.

    Called in the first (hidden) cell of every chapter. A fixed thread count matters:
    the order of a floating-point reduction, and so its last digits, depends on it.
    """
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    torch.set_printoptions(precision=4, sci_mode=False)
