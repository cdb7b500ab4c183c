"""Why MAC's MQAR accuracy falls with the number of pairs (chapter 8): what its wrong answers are,
and what its memories write.

Loads trained MQAR runs (``benchmarks/mqar.py``) and, on the evaluation's batches (the same
streams as :func:`~mac_minimal.evaluation.evaluate_mqar`: 4 batches of 32 per pair count), sorts
every answer asked beyond its pair's segment into: right; the value of *another* pair of the same
stream (the memory returned a fact it holds, not the one asked for); a value the stream does not
hold; not a value at all. Wrong answers that are another pair's value are also counted by that
pair's place in the stream (0: written first). Then, per layer, the memory's rates where the pairs
are written and elsewhere (the step size ``theta_t`` at the pairs' value and key tokens and at
every later token; the momentum ``eta_t``; the forgetting ``alpha_t``) and the cosine between the
keys ``k_t`` written at the value tokens of two different pairs (1: the memory cannot tell them
apart; 0: orthogonal, each fact stored apart).

Writes ``book/results/mqar/probe-NAME-sSEED.json``.

    OMP_NUM_THREADS=1 python benchmarks/mqar_probe.py --only mac-3000 --seeds 0
"""

import argparse
import json
import sys

import torch

from common import environment, load_recall_run, write_json
from mac_minimal.data import mqar_batch
from mac_minimal.evaluation import EVAL_SEED, beyond_segment, mqar_pair_counts
from mqar import CONTINUED, OUT, RUNS, VARIANTS

BATCHES, BATCH_SIZE = 4, 32                      # evaluate_mqar's evaluation in the runs


def written_inputs(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits for ``tokens`` (b, n) and, per layer, what its memory writes: the attention
    outputs y (b, n, d)."""
    caught: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    hooks = [block.attn.memory.register_forward_pre_hook(lambda _m, args, layer=layer: caught[layer].append(args[0]))
             for layer, block in enumerate(model.blocks)]
    try:
        logits, _ = model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, [torch.cat(pieces, dim=1) for pieces in caught]


@torch.no_grad()
def probe(name: str, seed: int) -> dict:
    run = RUNS / f"{name}-s{seed}"
    model, cfg, step = load_recall_run(run)
    model.eval()
    task, answers, layers = cfg.recall_task, {}, []
    for pairs in mqar_pair_counts(cfg.num_facts):
        generator = torch.Generator().manual_seed(EVAL_SEED + pairs)
        counts = {"right": 0, "another_pairs_value": 0, "a_value_not_in_the_stream": 0, "not_a_value": 0}
        by_pair = [0] * pairs
        for _ in range(BATCHES):
            batch = mqar_batch(BATCH_SIZE, cfg.seq_len, pairs, generator, task)
            logits, written = written_inputs(model, batch.inputs)
            predicted, far = logits.argmax(-1), beyond_segment(batch, pairs, cfg.segment_len)
            values = batch.inputs[:, 1: 2 * pairs: 2]                                   # (b, N)
            for row, position in far.nonzero().tolist():
                guess, answer = int(predicted[row, position]), int(batch.targets[row, position])
                held = (values[row] == guess).nonzero().flatten().tolist()
                if guess == answer:
                    counts["right"] += 1
                elif held:
                    counts["another_pairs_value"] += 1
                    by_pair[held[0]] += 1
                elif task.value_start <= guess < task.filler_start:
                    counts["a_value_not_in_the_stream"] += 1
                else:
                    counts["not_a_value"] += 1
            if pairs == cfg.num_facts // 2:                   # rates and keys: the last batch of 4 pairs
                layers = [memory_rates_and_keys(block.attn.memory, y, pairs)
                          for block, y in zip(model.blocks, written)]
        total = sum(counts.values())
        answers[pairs] = {"asked_beyond_segment": total, **{k: v / total for k, v in counts.items()},
                          "another_pairs_value_by_place": by_pair}
        shares = {k: round(v, 2) for k, v in answers[pairs].items() if isinstance(v, float)}
        print(f"  {name} s{seed}, {pairs} pairs: {shares}, wrong by place {by_pair}", flush=True)
    for layer, row in enumerate(layers):
        print(f"  layer {layer + 1}: {row}", flush=True)
    return {"variant": name, "seed": seed, "step": step, "command": " ".join(["python", *sys.argv]),
            "environment": environment() | {"threads": 1}, "batches": BATCHES, "batch_size": BATCH_SIZE,
            "answers_beyond_segment": answers, "memory_by_layer": layers, "rates_and_keys_pairs": cfg.num_facts // 2}


def memory_rates_and_keys(memory: torch.nn.Module, y: torch.Tensor, pairs: int) -> dict:
    """Mean rates at the pairs' value tokens, key tokens and the tokens after the pairs, and the mean
    cosine between the keys written at the value tokens of two different pairs."""
    theta, eta, alpha = memory.rates(y)                                  # (b, n) each
    keys, _ = memory.keys_values(y)                                      # unit vectors (b, n, d)
    value_tokens, key_tokens = slice(1, 2 * pairs, 2), slice(0, 2 * pairs, 2)
    after = slice(2 * pairs, None)
    k = keys[:, value_tokens]                                            # (b, N, d)
    cosine = k @ k.mT
    different = ~torch.eye(pairs, dtype=torch.bool)
    return {"theta_value_tokens": float(theta[:, value_tokens].mean()),
            "theta_key_tokens": float(theta[:, key_tokens].mean()),
            "theta_after_pairs": float(theta[:, after].mean()),
            "eta_value_tokens": float(eta[:, value_tokens].mean()), "eta_after_pairs": float(eta[:, after].mean()),
            "alpha_mean": float(alpha.mean()),
            "key_cosine_between_pairs": float(cosine[:, different].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=[*VARIANTS, *CONTINUED], default=["mac-3000"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.only:
        for seed in args.seeds:
            write_json(OUT / f"probe-{name}-s{seed}.json", probe(name, seed))


if __name__ == "__main__":
    main()
