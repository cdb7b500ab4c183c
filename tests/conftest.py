"""Shared test settings.

One torch thread per test process: the suite runs in two processes (pytest-xdist), one per
core of the CI machine, and two threads each would only fight over the cores.
"""

import torch

torch.set_num_threads(1)
