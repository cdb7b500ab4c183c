"""How many pairs the neural memory itself can hold, apart from any model (chapter 8, MQAR).

A :class:`~mac_minimal.neural_memory.NeuralMemory` of MAC's MQAR runs (width 64, chunks of 8, no
forgetting: alpha ~ 4.5e-5) is written N key-value pairs (1, 2, 4, 8), one token each, with fixed
rates: the step size ``theta`` (0.03, MAC's cap; 0.1) and the momentum ``eta`` (0: none; 0.5; 0.9;
0.95, what MAC learns at the pairs' values, ``benchmarks/mqar_probe.py``). The keys are unit vectors
whose pairwise cosine is ``c`` (0: orthogonal; 0.25 and 0.5, what MAC's trained keys reach), the
values ``silu`` of Gaussian vectors, like eq. (11)'s. Every write moves all fast weights (the default)
or only the matrices W1, W2 (``NeuralMemoryConfig.write_norm=False``). Each key is then read back, ``M(k_i)`` (eq. 15,
with the key as the query), and the answer is the stored value whose direction is nearest to what the
writes changed, ``M(k_i) - M_0(k_i)``: the best a reader of the memory could do. Chance is 1 / N.

Writes ``book/results/mqar/memory_alone.json``: accuracy per (write_norm, c, eta, theta, N) and the
size of the change relative to the read, over 256 streams per cell.

    OMP_NUM_THREADS=1 python benchmarks/mqar_memory_alone.py
"""

import itertools
import time

import torch
import torch.nn.functional as F

from common import RESULTS, environment, write_json
from mac_minimal.fast_weights import memory_mlp
from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryConfig

DIM, STREAMS, SEED = 64, 256, 0
PAIRS = (1, 2, 4, 8)
COSINES = (0.0, 0.25, 0.5)
MOMENTA = (0.0, 0.5, 0.9, 0.95)
STEPS = (0.03, 0.1)
WRITE_NORM = (True, False)
ALPHA = 4.5e-5                                   # sigmoid(-10), the MQAR runs' forgetting


def keys_and_values(pairs: int, cosine: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit keys (b, N, d) with pairwise cosine ``cosine`` (a shared direction plus orthogonal parts)
    and values ``silu(g)``, g Gaussian (b, N, d)."""
    shared = F.normalize(torch.randn(STREAMS, 1, DIM, generator=generator), dim=-1)
    own = torch.randn(STREAMS, pairs, DIM, generator=generator)
    own = own - (own * shared).sum(-1, keepdim=True) * shared
    own = torch.linalg.qr(own.transpose(1, 2)).Q.transpose(1, 2)      # orthonormal, orthogonal to shared
    keys = cosine**0.5 * shared + (1 - cosine) ** 0.5 * own
    return keys, F.silu(torch.randn(STREAMS, pairs, DIM, generator=generator))


def read(weights: tuple[torch.Tensor, ...], keys: torch.Tensor) -> torch.Tensor:
    """``M(k)`` for every key (b, N, d) with each stream's memory, like ``NeuralMemory.read``."""
    w1, w2, gain, bias = weights
    return memory_mlp((w1, w2, gain[:, None], bias[:, None]), keys)


@torch.no_grad()
def cell(memory: NeuralMemory, pairs: int, cosine: float, eta: float, theta: float) -> dict:
    generator = torch.Generator().manual_seed(SEED + pairs)
    keys, values = keys_and_values(pairs, cosine, generator)
    rates = [torch.full((STREAMS, pairs), r) for r in (theta, eta, ALPHA)]
    empty = memory.init_state(STREAMS)
    written = memory.write_kv(keys, values, *rates, empty)
    before, after = read(empty.weights, keys), read(written.weights, keys)
    change = after - before
    similarity = torch.einsum("bnd,bmd->bnm", F.normalize(change, dim=-1), F.normalize(values, dim=-1))
    right = similarity.argmax(-1) == torch.arange(pairs)
    return {"pairs": pairs, "key_cosine": cosine, "momentum": eta, "step": theta,
            "write_norm": memory.config.write_norm,
            "accuracy": round(right.float().mean().item(), 4),
            "relative_change": round((change.norm(dim=-1) / before.norm(dim=-1)).mean().item(), 4)}


def main() -> None:
    start, cells = time.perf_counter(), []
    for write_norm in WRITE_NORM:
        torch.manual_seed(SEED)                      # the same M_0 for both
        memory = NeuralMemory(NeuralMemoryConfig(dim=DIM, chunk_size=8, write_norm=write_norm))
        cells += [cell(memory, n, c, eta, theta)
                  for c, eta, theta, n in itertools.product(COSINES, MOMENTA, STEPS, PAIRS)]
    for write_norm, c, eta, theta in itertools.product(WRITE_NORM, COSINES, MOMENTA, STEPS):
        row = [x["accuracy"] for x in cells
               if (x["write_norm"], x["key_cosine"], x["momentum"], x["step"]) == (write_norm, c, eta, theta)]
        print(f"write_norm {write_norm!s:5} cosine {c:4} momentum {eta:4} step {theta:4}: pairs {PAIRS} -> {row}",
              flush=True)
    write_json(RESULTS / "mqar" / "memory_alone.json",
               {"command": "OMP_NUM_THREADS=1 python benchmarks/mqar_memory_alone.py",
                "wall_s": round(time.perf_counter() - start, 1), "environment": environment() | {"threads": 1},
                "streams": STREAMS, "dim": DIM, "chunk_size": 8, "alpha": ALPHA, "cells": cells})


if __name__ == "__main__":
    main()
