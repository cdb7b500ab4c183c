"""Can the neural memory learn MQAR by itself? Its projections trained end to end (chapter 8, MQAR).

``mqar_memory_alone.py`` writes hand-made keys into the memory. Here nothing is hand-made: a model of
three parts, an embedding, ONE :class:`~mac_minimal.neural_memory.NeuralMemory` and a read-out,

    x = Embed(tokens),   y_t = M_t(q_t) = NeuralMemory(x)_t,   logits_t = W_out LN(y_t)

is trained on the MQAR streams of MAC's runs (64 tokens, 4 to 8 pairs per batch, the answers
hidden: ``mqar_batch(.., show_answers=False)``) with MAC's optimiser (AdamW, lr 3e-3, weight decay
0.1). No attention: the memory's own projections W_Q, W_K, W_V, its rates and M_0 must learn to
write each pair and to read it back with the key alone. The memory is MAC's (width 64, chunks of 8,
no forgetting: alpha ~ 4.5e-5), with and without the paper's short convolution (``conv_size`` 2:
the key written at a value token can hold the key token before it), at MAC's step cap (0.03) and
at chapter 4's (0.1). Every 250 steps :func:`~mac_minimal.evaluation.evaluate_mqar` on 1, 2, 4
and 8 pairs (beyond the segment: asked more than 8 tokens after, as for MAC).

Writes ``book/results/mqar/memory_trained.json``: per variant the evaluation curve.

    OMP_NUM_THREADS=1 python benchmarks/mqar_memory_trained.py --jobs 2
    python benchmarks/mqar_memory_trained.py --steps 20 --out /tmp/smoke.json   # a smoke run
"""

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import RESULTS, environment, write_json
from mac_minimal.data import RecallTask, mqar_batch
from mac_minimal.evaluation import evaluate_mqar
from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryConfig, NeuralMemoryState

DIM, SEQ_LEN, BATCH, MIN_PAIRS, MAX_PAIRS, SEGMENT = 64, 64, 32, 4, 8, 8
EVAL_EVERY, EVAL_BATCHES = 250, 4
VARIANTS = {                         # name -> (conv_size, max_lr)
    "conv0-lr0.03": (0, 0.03), "conv0-lr0.1": (0, 0.1),
    "conv2-lr0.03": (2, 0.03), "conv2-lr0.1": (2, 0.1),
}


class MemoryOnly(nn.Module):
    """Embedding -> one neural memory (write and read, ``y_t = M_t(q_t)``) -> layer norm -> logits."""

    def __init__(self, vocab_size: int, conv_size: int, max_lr: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, DIM)
        self.memory = NeuralMemory(NeuralMemoryConfig(dim=DIM, chunk_size=8, conv_size=conv_size, max_lr=max_lr,
                                                      alpha_logit_init=-10.0))
        self.norm = nn.LayerNorm(DIM)
        self.out = nn.Linear(DIM, vocab_size)

    def forward(self, tokens: Tensor) -> tuple[Tensor, NeuralMemoryState]:
        """tokens (b, n) -> logits (b, n, vocab), the memory after the last token."""
        y, state = self.memory(self.embed(tokens))
        return self.out(self.norm(y)), state


def train(name: str, steps: int, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    conv_size, max_lr = VARIANTS[name]
    task = RecallTask()
    model = MemoryOnly(task.vocab_size, conv_size, max_lr)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    generator, start, curve = torch.Generator().manual_seed(seed + 1), time.perf_counter(), []
    for step in range(1, steps + 1):
        pairs = int(torch.randint(MIN_PAIRS, MAX_PAIRS + 1, (1,), generator=generator))
        batch = mqar_batch(BATCH, SEQ_LEN, pairs, generator, task, show_answers=False)
        logits, _ = model(batch.inputs)
        loss = F.cross_entropy(logits[batch.mask], batch.targets[batch.mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % EVAL_EVERY == 0 or step == steps:
            result = evaluate_mqar(model, SEQ_LEN, MAX_PAIRS, SEGMENT, BATCH, EVAL_BATCHES, task=task,
                                   show_answers=False)
            curve.append({"step": step, "train_loss": round(loss.item(), 4), "accuracy": result["accuracy"],
                          "beyond_segment": result["beyond_segment"]})
            print(f"{name} step {step}: beyond the segment {result['beyond_segment']}", flush=True)
    return {"variant": name, "conv_size": conv_size, "max_lr": max_lr, "seed": seed,
            "wall_s": round(time.perf_counter() - start, 1), "final": curve[-1], "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once, one thread each")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", default=str(RESULTS / "mqar" / "memory_trained.json"))
    args = parser.parse_args()
    command = " ".join(["OMP_NUM_THREADS=1 python benchmarks/mqar_memory_trained.py", *sys.argv[1:]])
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(train, args.only, [args.steps] * len(args.only)))
    write_json(Path(args.out),
               {"command": command, "environment": environment() | {"threads": 1}, "dim": DIM,
                "seq_len": SEQ_LEN, "batch": BATCH, "pairs": [MIN_PAIRS, MAX_PAIRS], "show_answers": False,
                "optimizer": "AdamW lr 3e-3 weight decay 0.1", "eval_batches": EVAL_BATCHES, "runs": runs})


if __name__ == "__main__":
    main()
