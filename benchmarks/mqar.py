"""More than one fact (chapter 8): multi-query associative recall (Arora et al. 2023, "Zoology").

``--task mqar`` streams of 64 tokens: 1 to 8 key-value pairs (drawn per batch) open the stream, and
each key is asked once later, at a random place in the filler (:func:`~mac_minimal.data.mqar_batch`).
Full attention is trained with two optimiser settings: lr 1e-3 after 200 warmup steps without weight
decay (``full_attention``), and the recall runs' lr 3e-3 after 20 steps with weight decay 0.1
(``full_attention-lr3e-3``); MAC with the second, the one its recall runs learn with; the memory-free
model with the first. All at one parameter budget (``--dim``: MAC's width; the others at the width
that matches its parameter count), 1,500 steps.

The evaluation (:func:`~mac_minimal.evaluation.evaluate_mqar`) gives accuracy against the number of
pairs (1, 2, 4, 8), over all queries and over those asked beyond their pair's segment (8 tokens),
which attention inside a segment cannot see: there only MAC's memory can answer.

Writes ``book/results/mqar/NAME-sSEED.json`` (the command, its wall time, the evaluation curve and
the last evaluation) and a copy of the run's ``metrics.jsonl``.

    OMP_NUM_THREADS=1 python benchmarks/mqar.py --only full_attention mac --seeds 0 --jobs 2
    python benchmarks/mqar.py --list
"""

import shutil

from common import (RESULTS, ROOT, environment, run_trainer, run_variants, set_flags, variant_flags, variant_parser,
                    write_json)
from mac_trainability import COMMON

OUT = RESULTS / "mqar"
RUNS = ROOT / "runs" / "mqar"

TASK = ["--task", "mqar", "--num-facts", "8", "--num-values", "32", "--seq-len", "64", "--segment-len", "8",
        "--chunk-size", "8", "--batch-size", "32", "--eval-every", "250", "--eval-batches", "4",
        "--lr", "1e-3", "--warmup-steps", "200", "--weight-decay", "0"]
# TASK with the recall runs' optimiser (lr 3e-3 after 20 warmup steps, weight decay 0.1), which MAC learns with
TASK_MAC_OPTIMISER = set_flags(TASK, lr="3e-3", warmup_steps=20, weight_decay=0.1)
# streams of 4 to 8 pairs only, the answers hidden: neither a bag of values nor elimination answers them
HIDDEN_MANY = ["--no-mqar-show-answers", "--min-facts", "4"]
# chapter 8's recipe on those streams: the memory writes the layer's input x through a convolution of 2
WRITES_INPUT = [*HIDDEN_MANY, "--memory-conv-size", "2", "--memory-input", "input"]
MAC = ["--model", "mac", "--memory-scale-init", "0", "--memory-max-lr", "0.03", "--memory-alpha-logit-init", "-10"]
VARIANTS = {
    "full_attention": TASK + ["--model", "full_attention", "--dim", "64", "--steps", "1500"],
    "full_attention-lr3e-3": TASK_MAC_OPTIMISER
                             + ["--model", "full_attention", "--dim", "64", "--steps", "1500"],
    "mac_no_memory": TASK + ["--model", "mac_no_memory", "--dim", "64", "--steps", "1500"],
    "mac": TASK_MAC_OPTIMISER + MAC
           + ["--dim", "64", "--steps", "1500", "--compile"],
    # twice the steps (MAC's one-pair accuracy was still rising at 1,500, 0.20 at step 1,000)
    "mac-3000": TASK_MAC_OPTIMISER + MAC
                + ["--dim", "64", "--steps", "3000", "--compile"],
    # its wrong answers are other pairs' values, the oldest most often (momentum near 1 makes an older
    # write weigh more): the momentum capped at 0.9 weighs every write alike (stopped at step 1,750, far
    # behind mac-3000: book/results/mqar/mac-eta0.9-3000-s0.json)
    "mac-eta0.9-3000": TASK_MAC_OPTIMISER + MAC
                       + ["--memory-max-momentum", "0.9", "--dim", "64", "--steps", "3000", "--compile"],
    # the memory alone (benchmarks/mqar_memory_alone.py) holds four pairs with orthogonal keys at 0.80
    # with momentum 0.95, at 0.99 without: a write's momentum keeps adding the first pairs' gradients
    # while the later pairs are written. No momentum, at the same step cap and at a larger one
    "mac-momentum0-3000": TASK_MAC_OPTIMISER + MAC
                          + ["--memory-max-momentum", "0", "--dim", "64", "--steps", "3000", "--compile"],
    "mac-momentum0-lr0.1-3000": TASK_MAC_OPTIMISER
                                + set_flags(MAC, memory_max_lr="0.1")
                                + ["--memory-max-momentum", "0", "--dim", "64", "--steps", "3000", "--compile"],
    # the trained mac-3000-then6000 answers a question about as well with its memory's matrices reset
    # before the read as without (benchmarks/mqar_probe.py): the read's answer comes from the layer
    # norm's gain and bias, the same for every key. Writing only the matrices takes that path away
    "mac-matrices-3000": TASK_MAC_OPTIMISER + MAC
                         + ["--no-memory-write-norm", "--dim", "64", "--steps", "3000", "--compile"],
    # its queries still meet their own key no better than the other keys: the paper's short causal
    # convolution after the memory's q, k, v projections (section 4.4) lets the key written at a value
    # token hold the key token before it, so one write can be one (key, value) pair
    "mac-conv4-3000": TASK_MAC_OPTIMISER + MAC
                      + ["--memory-conv-size", "4", "--dim", "64", "--steps", "3000", "--compile"],
    "mac-matrices-conv4-3000": TASK_MAC_OPTIMISER + MAC
                               + ["--no-memory-write-norm", "--memory-conv-size", "4", "--dim", "64",
                                  "--steps", "3000", "--compile"],
    # neither made the query meet its own key: a bag of the stream's values answers one pair perfectly
    # and is learned first. Streams of 4 to 8 pairs only (--min-facts 4), where a bag cannot answer
    "mac-many-3000": TASK_MAC_OPTIMISER + MAC
                     + ["--min-facts", "4", "--dim", "64", "--steps", "3000", "--compile"],
    "mac-matrices-many-3000": TASK_MAC_OPTIMISER + MAC
                              + ["--no-memory-write-norm", "--min-facts", "4", "--dim", "64", "--steps", "3000",
                                 "--compile"],
    # on 4 to 8 pairs the matrices carry answers but the queries still meet their own key at chance:
    # both at once, the many pairs and the short convolution that can put a key and its value in one write
    "mac-many-conv4-3000": TASK_MAC_OPTIMISER + MAC
                           + ["--min-facts", "4", "--memory-conv-size", "4", "--dim", "64", "--steps", "3000",
                              "--compile"],
    # every variant above answers about as a model that knows no key would by elimination: a value
    # already shown as an answer is not the next answer (about 1, 0.75, 0.52, 0.34 with 1, 2, 4, 8
    # pairs; benchmarks/mqar_probe.py). Streams that do not show the answers take that way away
    "full_attention-hidden": TASK + ["--no-mqar-show-answers", "--model", "full_attention", "--dim", "64",
                                     "--steps", "1500"],
    "mac_no_memory-hidden": TASK + ["--no-mqar-show-answers", "--model", "mac_no_memory", "--dim", "64",
                                    "--steps", "1500"],
    "mac-hidden-3000": TASK_MAC_OPTIMISER + MAC
                       + ["--no-mqar-show-answers", "--dim", "64", "--steps", "3000", "--compile"],
    # and no stream of fewer than 4 pairs, where a bag of values would still answer most questions
    "mac-many-hidden-3000": TASK_MAC_OPTIMISER + MAC + [*HIDDEN_MANY, "--dim", "64", "--steps", "3000", "--compile"],
    # the neural memory alone, its projections trained on these streams (benchmarks/mqar_memory_trained.py),
    # learns every pair count to 1.00 in under 1,000 steps with a convolution of 2 and none without one:
    # the same convolution in MAC, at the memory-alone runs' two step caps
    "mac-many-hidden-conv2-3000": TASK_MAC_OPTIMISER + MAC + [*HIDDEN_MANY, "--memory-conv-size", "2", "--dim", "64",
                                                            "--steps", "3000", "--compile"],
    "mac-many-hidden-conv2-lr0.1-3000": TASK_MAC_OPTIMISER + set_flags(MAC, memory_max_lr="0.1")
                                        + [*HIDDEN_MANY, "--memory-conv-size", "2", "--dim", "64", "--steps", "3000",
                                           "--compile"],
    # both reach the bag by step 1,500 and no further, while the memory alone is at 1.00 by step 500: in MAC
    # the memory writes the attention output y (eq. 24), not the token. The same run with the memory
    # writing the layer's input x, as titans-pytorch does (--memory-input input)
    "mac-many-hidden-conv2-lr0.1-input-3000": TASK_MAC_OPTIMISER + set_flags(MAC, memory_max_lr="0.1")
                                              + [*WRITES_INPUT, "--dim", "64", "--steps", "3000", "--compile"],
    # it learns every count (1.00 from step 1,000, three seeds). Which of its parts are needed: the same
    # without the convolution (a key token and its value are then two writes), and at MAC's step cap
    "mac-many-hidden-input-lr0.1-3000": TASK_MAC_OPTIMISER + set_flags(MAC, memory_max_lr="0.1")
                                        + [*HIDDEN_MANY, "--memory-input", "input", "--dim", "64", "--steps", "3000",
                                           "--compile"],
    "mac-many-hidden-conv2-input-3000": TASK_MAC_OPTIMISER + MAC
                                        + [*WRITES_INPUT, "--dim", "64", "--steps", "3000", "--compile"],
}
# continued variants: name -> (the run they resume a copy of, the flags changed); the learning rate
# follows the longer schedule's cosine from the step reached (about half its peak at step 3,000 of 6,000)
CONTINUED = {
    # mac-3000 was still learning: it wrote only at the pairs by then, and the keys of two pairs had
    # moved apart (cosine 0.57 at 1,500 steps, 0.36-0.41 at 3,000; benchmarks/mqar_probe.py)
    "mac-3000-then6000": ("mac-3000", dict(steps=6000)),
    # writing only the matrices, its two-pair accuracy close to its one-pair at step 3,000 (a lookup,
    # not a bag of values), and still rising
    "mac-matrices-3000-then6000": ("mac-matrices-3000", dict(steps=6000)),
    # seed 0 still rising at step 6,000 (four pairs 0.30 at 4,500, more since): 3,000 steps more
    "mac-matrices-3000-then9000": ("mac-matrices-3000-then6000", dict(steps=9000)),
    # trained on 4 to 8 pairs its matrices carry half of the answers at step 3,000 (queries still at
    # chance): 3,000 steps more, as for mac-3000 (and for its matrices-only twin)
    "mac-many-3000-then6000": ("mac-many-3000", dict(steps=6000)),
    "mac-matrices-many-3000-then6000": ("mac-matrices-many-3000", dict(steps=6000)),
    # with every weight written, 0.42 with four pairs at 6,000 and rising: 3,000 steps more
    "mac-many-3000-then9000": ("mac-many-3000-then6000", dict(steps=9000)),
    # with the answers hidden, at what a bag of values scores at step 3,000 (above it with 8 pairs) and
    # still rising: 3,000 steps more, twice
    "mac-many-hidden-3000-then6000": ("mac-many-hidden-3000", dict(steps=6000)),
    "mac-many-hidden-3000-then9000": ("mac-many-hidden-3000-then6000", dict(steps=9000)),
}


def command(name: str, seed: int) -> list[str]:
    # COMMON's optimiser flags come first; the variant's follow and win
    return ["python", "-m", "mac_minimal.train", *COMMON, *variant_flags(name, VARIANTS, CONTINUED),
            "--seed", str(seed),
            "--out", str((RUNS / f"{name}-s{seed}").relative_to(ROOT))]


def run(name: str, seed: int) -> dict:
    """Train the variant (a continued one: a copy of its base's finished run, resumed), record it."""
    cmd = command(name, seed)
    wall, metrics = run_trainer(cmd, RUNS / f"{CONTINUED[name][0]}-s{seed}" if name in CONTINUED else None)
    out = ROOT / cmd[-1]
    evals = [m for m in metrics if m["event"] == "eval"]
    result = {"variant": name, "seed": seed, "command": " ".join(cmd), "wall_s": round(wall, 1),
              "environment": environment() | {"threads": 1}, "final": evals[-1],
              "curve": [{"step": e["step"], "accuracy": e["accuracy"], "beyond_segment": e["beyond_segment"]}
                        for e in evals]}
    write_json(OUT / f"{name}-s{seed}.json", result)
    shutil.copy(out / "metrics.jsonl", OUT / f"{name}-s{seed}.jsonl")
    print(f"{name} s{seed}: {evals[-1]['accuracy']} (beyond the segment {evals[-1]['beyond_segment']}) "
          f"in {wall:.0f} s", flush=True)
    return result


def main() -> None:
    args = variant_parser(__doc__, [*VARIANTS, *CONTINUED]).parse_args()
    run_variants(args, command, run)

if __name__ == "__main__":
    main()
