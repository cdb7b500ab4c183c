"""Why MAC's MQAR accuracy falls with the number of pairs (chapter 8): what its wrong answers are,
and what its memories write.

Loads trained MQAR runs (``benchmarks/mqar.py``) and, on the evaluation's batches (the same
streams as :func:`~mac_minimal.evaluation.evaluate_mqar`: 4 batches of 32 per pair count), sorts
every answer asked beyond its pair's segment into: right; the value of *another* pair of the same
stream (the memory returned a fact it holds, not the one asked for); a value the stream does not
hold; not a value at all. Wrong answers that are another pair's value are also counted by that
pair's place in the stream (0: written first) and by whether the stream had already shown that
value as an earlier question's answer. Accuracy is also counted by the question's place among the
stream's questions (0: asked first), beside what two models that know the stream's values but no
key would score on the same questions (:func:`no_key_chances`): a value of the pairs at random
(a bag), and a value of the pairs not yet asked at random (elimination, which the answers the
stream shows after its questions allow: ``1 / (N - j)`` at the j-th of N questions when the values
differ, ``H_N / N`` on average). Then, per layer, the memory's rates where the pairs
are written and elsewhere (the step size ``theta_t`` at the pairs' value and key tokens and at
every later token; the momentum ``eta_t``; the forgetting ``alpha_t``) and the cosine between the
keys ``k_t`` written at the value tokens of two different pairs (1: the memory cannot tell them
apart; 0: orthogonal, each fact stored apart), and how the queries read at each question (eq. 21's
and eq. 25's) meet the key written at its own pair's value and at the other pairs' (mean cosines;
how often its own is the nearest). Last, the evaluation again, twice changed: with every memory's
momentum removed and its step size scaled by 20, so that a write moves the weights as far in total
as with a momentum of 0.95 (does the model recall more pairs when the first ones no longer keep
growing?); and with eq. 21's read taking part of the memory as it was before any write, the
matrices W1, W2 or the layer norm's gain and bias (which part carries the answers?).

Writes ``book/results/mqar/probe-NAME-sSEED.json``.

    OMP_NUM_THREADS=1 python benchmarks/mqar_probe.py --only mac-3000 --seeds 0
"""

import argparse
import contextlib
import sys
from typing import Callable, Iterator

import torch

from common import environment, load_recall_run, write_json
from mac_minimal.data import Batch, mqar_batch
from mac_minimal.evaluation import EVAL_SEED, beyond_segment, evaluate_mqar, mqar_pair_counts
from mac_minimal.neural_memory import NeuralMemoryState
from mqar import CONTINUED, OUT, RUNS, VARIANTS

BATCHES, BATCH_SIZE = 4, 32                      # evaluate_mqar's evaluation in the runs
MOMENTUM_FREE_STEP_SCALE = 20.0
# the read at a question with part of the memory as it was before any write: the two matrices, which
# a key selects from, or the layer norm's gain and bias, which add the same to every key's read
READ_WITH_INITIAL = {"W1 and W2": (0, 1), "gain and bias": (2, 3)}


def written_inputs(model: torch.nn.Module, tokens: torch.Tensor
                   ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The logits for ``tokens`` (b, n) and, per layer, what its memory writes (the attention
    outputs y, b, n, d) and what it reads with (the layer's input x, whose queries eq. 21 takes)."""
    written: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    read: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    hooks = [module.register_forward_pre_hook(lambda _m, args, into=into: into.append(args[0]))
             for block, w, r in zip(model.blocks, written, read)
             for module, into in ((block.attn.memory, w), (block.attn, r))]
    try:
        logits, _ = model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, *([torch.cat(pieces, dim=1) for pieces in caught] for caught in (written, read))


@contextlib.contextmanager
def memories_with(model: torch.nn.Module, name: str, make: Callable[[torch.nn.Module], Callable]) -> Iterator[None]:
    """While inside, every layer's memory has its method ``name`` replaced by ``make(memory)`` (which
    may call the class's own, ``type(memory).<name>(memory, ...)``); undone on exit, also on error."""
    memories = [block.attn.memory for block in model.blocks]
    for memory in memories:
        setattr(memory, name, make(memory))
    try:
        yield
    finally:
        for memory in memories:
            delattr(memory, name)


def without_momentum(model: torch.nn.Module, step_scale: float) -> contextlib.AbstractContextManager:
    """Every memory writes with ``eta_t = 0`` and ``theta_t`` times ``step_scale`` (20 keeps a write's
    total move, ``theta / (1 - eta)``, at a momentum of 0.95)."""
    def make(memory: torch.nn.Module) -> Callable:
        def rates(y: torch.Tensor) -> tuple[torch.Tensor, ...]:
            theta, eta, alpha = type(memory).rates(memory, y)
            return theta * step_scale, torch.zeros_like(eta), alpha
        return rates
    return memories_with(model, "rates", make)


def read_with_initial(model: torch.nn.Module, parts: tuple[int, ...]) -> contextlib.AbstractContextManager:
    """Eq. (21)'s read (``h = M*_{t-1}(q)``) uses the fast weights numbered ``parts`` (0: W1, 1: W2,
    2: the layer norm's gain, 3: its bias) as they were before anything was written, ``M_0``'s, and
    the written ones for the rest; the writes themselves are unchanged."""
    def make(memory: torch.nn.Module) -> Callable:
        def read(q_input: torch.Tensor, state: NeuralMemoryState, recent: torch.Tensor | None = None
                 ) -> torch.Tensor:
            weights = tuple(p.expand_as(w) if i in parts else w
                            for i, (p, w) in enumerate(zip(memory.initial_weights, state.weights)))
            return type(memory).read(memory, q_input, state._replace(weights=weights), recent=recent)
        return read
    return memories_with(model, "read", make)


def no_key_chances(values: torch.Tensor, asked_before: torch.Tensor, answer: int) -> tuple[float, float]:
    """How often a model that knows the pairs' values (N,) but no key answers a question right:
    picking one of the N values at random (a bag: ``bag``), or one of the values of the pairs not
    yet asked (``asked_before`` (N,) bool; elimination, which shown answers allow). With N different
    values these are ``1 / N`` and ``1 / (N - j)`` at the j-th question; values may repeat across
    pairs, which raises both."""
    return float((values == answer).float().mean()), float((values[~asked_before] == answer).float().mean())


@torch.no_grad()
def probe(name: str, seed: int) -> dict:
    run = RUNS / f"{name}-s{seed}"
    model, cfg, step = load_recall_run(run)
    model.eval()
    task, answers, layers = cfg.recall_task, {}, []
    for pairs in mqar_pair_counts(cfg.num_facts):
        generator = torch.Generator().manual_seed(EVAL_SEED + pairs)
        counts = {"right": 0, "another_pairs_value": 0, "a_value_not_in_the_stream": 0, "not_a_value": 0}
        by_pair, already_asked, bag, elimination = [0] * pairs, 0, 0.0, 0.0
        right_by_place, asked_by_place, elimination_by_place = [0] * pairs, [0] * pairs, [0.0] * pairs
        for _ in range(BATCHES):
            batch = mqar_batch(BATCH_SIZE, cfg.seq_len, pairs, generator, task, cfg.mqar_show_answers)
            logits, written, read = written_inputs(model, batch.inputs)
            predicted, far = logits.argmax(-1), beyond_segment(batch, pairs, cfg.segment_len)
            values = batch.inputs[:, 1: 2 * pairs: 2]                                   # (b, N)
            place = batch.mask.long().cumsum(-1) - 1                  # a question's place: 0 = asked first
            for row, position in far.nonzero().tolist():
                guess, answer = int(predicted[row, position]), int(batch.targets[row, position])
                held = (values[row] == guess).nonzero().flatten().tolist()
                asked_by_place[place[row, position]] += 1
                keys_asked_before = batch.inputs[row, :position][batch.mask[row, :position]]
                asked_before = torch.isin(batch.inputs[row, 0: 2 * pairs: 2], keys_asked_before)
                chances = no_key_chances(values[row], asked_before, answer)
                bag, elimination = bag + chances[0], elimination + chances[1]
                elimination_by_place[place[row, position]] += chances[1]
                if guess == answer:
                    counts["right"] += 1
                    right_by_place[place[row, position]] += 1
                elif held:
                    counts["another_pairs_value"] += 1
                    by_pair[held[0]] += 1
                    # the stream shows each question's answer right after it: was this value shown already?
                    already_asked += bool((batch.inputs[row, 2 * pairs: position] == guess).any())
                elif task.value_start <= guess < task.filler_start:
                    counts["a_value_not_in_the_stream"] += 1
                else:
                    counts["not_a_value"] += 1
            if pairs == cfg.num_facts // 2:                   # rates and keys: the last batch of 4 pairs
                layers = [memory_rates_and_keys(block.attn.memory, y, x, batch, pairs)
                          for block, y, x in zip(model.blocks, written, read)]
        total = sum(counts.values())
        answers[pairs] = {"asked_beyond_segment": total, **{k: v / total for k, v in counts.items()},
                          "another_pairs_value_by_place": by_pair,
                          "another_pairs_value_already_answered": already_asked / total,
                          "bag_chance": bag / total, "elimination_chance": elimination / total,
                          "right_by_question_place": [r / max(a, 1) for r, a in zip(right_by_place, asked_by_place)],
                          "elimination_chance_by_question_place": [e / max(a, 1) for e, a in
                                                                   zip(elimination_by_place, asked_by_place)]}
        shares = {k: round(v, 2) for k, v in answers[pairs].items() if isinstance(v, float)}
        print(f"  {name} s{seed}, {pairs} pairs: {shares}, wrong by place {by_pair}", flush=True)
        print(f"    right by the question's place: "
              f"{[round(a, 2) for a in answers[pairs]['right_by_question_place']]} (elimination: "
              f"{[round(a, 2) for a in answers[pairs]['elimination_chance_by_question_place']]})", flush=True)
    for layer, row in enumerate(layers):
        print(f"  layer {layer + 1}: {row}", flush=True)
    with without_momentum(model, MOMENTUM_FREE_STEP_SCALE):
        free = evaluate_mqar(model, cfg.seq_len, cfg.num_facts, cfg.segment_len, BATCH_SIZE, BATCHES,
                             task=task, show_answers=cfg.mqar_show_answers)["beyond_segment"]
    print(f"  without momentum, step x{MOMENTUM_FREE_STEP_SCALE}: {free}", flush=True)
    initial_parts = {}
    for label, parts in READ_WITH_INITIAL.items():
        with read_with_initial(model, parts):
            initial_parts[label] = evaluate_mqar(model, cfg.seq_len, cfg.num_facts, cfg.segment_len, BATCH_SIZE,
                                                 BATCHES, task=task,
                                                 show_answers=cfg.mqar_show_answers)["beyond_segment"]
        print(f"  eq. 21 read with M_0's {label}: {initial_parts[label]}", flush=True)
    return {"variant": name, "seed": seed, "step": step, "command": " ".join(["python", *sys.argv]),
            "environment": environment() | {"threads": 1}, "batches": BATCHES, "batch_size": BATCH_SIZE,
            "answers_beyond_segment": answers, "memory_by_layer": layers, "rates_and_keys_pairs": cfg.num_facts // 2,
            "momentum_free_step_scale": MOMENTUM_FREE_STEP_SCALE, "beyond_segment_without_momentum": free,
            "beyond_segment_read_with_initial": initial_parts}


def memory_rates_and_keys(memory: torch.nn.Module, y: torch.Tensor, x: torch.Tensor, batch: Batch,
                          pairs: int) -> dict:
    """Mean rates at the pairs' value tokens, key tokens and the tokens after the pairs; the mean
    cosine between the keys written at the value tokens of two different pairs; and how the query
    read at each question meets the key written at its own pair's value and at the other pairs'
    values (mean cosine each; how often its own is the nearest): eq. (21)'s query, from the layer's
    input x, and (``eq25_``) the query of the read after the write, eq. (25)'s, from y."""
    theta, eta, alpha = memory.rates(y)                                  # (b, n) each
    keys, _ = memory.keys_values(y)                                      # unit vectors (b, n, d)
    value_tokens, key_tokens = slice(1, 2 * pairs, 2), slice(0, 2 * pairs, 2)
    after = slice(2 * pairs, None)
    k = keys[:, value_tokens]                                            # (b, N, d)
    cosine = k @ k.mT
    different = ~torch.eye(pairs, dtype=torch.bool)
    rows, places = batch.mask.nonzero(as_tuple=True)                     # every question
    asked = batch.inputs[rows, places]                                   # its key token
    own = (batch.inputs[rows, 0: 2 * pairs: 2] == asked[:, None]).float().argmax(-1)   # its pair
    is_own = torch.nn.functional.one_hot(own, pairs).bool()

    def query_match(inputs: torch.Tensor, prefix: str) -> dict:         # the query of inputs (b, n, d)
        queries = memory.queries(inputs)[rows, places]                  # the whole stream's (a convolution's window)
        match = torch.einsum("qd,qnd->qn", queries, k[rows])             # (questions, N)
        return {f"{prefix}query_cosine_own_key": float(match[is_own].mean()),
                f"{prefix}query_cosine_other_keys": float(match[~is_own].mean()),
                f"{prefix}query_nearest_own_key": float((match.argmax(-1) == own).float().mean())}

    return {"theta_value_tokens": float(theta[:, value_tokens].mean()),
            "theta_key_tokens": float(theta[:, key_tokens].mean()),
            "theta_after_pairs": float(theta[:, after].mean()),
            "eta_value_tokens": float(eta[:, value_tokens].mean()), "eta_after_pairs": float(eta[:, after].mean()),
            "alpha_mean": float(alpha.mean()),
            "key_cosine_between_pairs": float(cosine[:, different].mean()),
            **query_match(x, ""), **query_match(y, "eq25_")}


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
