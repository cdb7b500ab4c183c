"""The memory's horizon (chapter 8): how far past its training length a trained MAC recalls one fact, and why.

Every variant is one trainer command on the one-fact task of ``mac_trainability.py`` (64-token
streams, segments and memory chunks of 8, both trainability changes), with the memory's rates
initialised differently, or (``CONTINUED``) such a run resumed on longer streams, a length
curriculum. Two steps, on one CPU thread per process:

* ``--train``: run the variants' commands (``runs/horizon/NAME-sSEED``; a finished run is kept);
* then, always: load each run's checkpoint and measure, on streams ``--long``
  times the training length (16x: 1,024 tokens, 128 segments), with the fact at every distance
  from half a segment to the whole stream (so the memory holds the filler written before the fact
  as well as after it):

  - recall accuracy against distance (:func:`~mac_minimal.evaluation.evaluate_recall`);
  - the memory's learned rates by token type on such a stream (``theta_t`` on the filler against
    on the fact, ``alpha_t``), and the learned biases of their logits;
  - with ``--precise N``, the same accuracy from N batches of 32 per distance (the first ones the
    same streams as the default 4 batches): a finer estimate where a result sits near a target;
  - with ``--by-length``, accuracy at near distances (8 .. 40 tokens) on streams 1, 2, 4, 8 and
    16x the training length: what a long history does to the recall of a recent fact;
  - with ``--alpha-shifts`` and ``--filler-theta``, the same accuracy with the rates forced at
    evaluation only: the forgetting logit shifted (the horizon against alpha), the step size on
    filler tokens scaled (0: the filler is not written; how much its writes interfere), and both;
  - with ``--eta-caps``, the same with the momentum ``eta_t`` clipped at each cap at evaluation
    only, in every layer and in the last layer alone (how much of the read comes from a write that
    momentum keeps pushing long after the fact).

Writes ``book/results/horizon/NAME-sSEED.json`` (the command, its wall time, the training-length
evaluation, the long-stream one) and a copy of the run's ``metrics.jsonl``.

    OMP_NUM_THREADS=1 python benchmarks/memory_horizon.py --train --only alpha-7 --seeds 0 1 2
    python benchmarks/memory_horizon.py --only alpha-7 --seeds 0 --alpha-shifts -2 2
    python benchmarks/memory_horizon.py --list
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import (RESULTS, environment, load_recall_run, run_variants, set_flags, variant_flags, variant_parser,
                    write_json)
from mac_minimal.evaluation import evaluate_recall
from mac_minimal.inspect_memory import momentum_capped
from mac_trainability import COMMON, ONE_FACT, TRAINABLE
from what_memory_learned import rates_by_token

ROOT = Path(__file__).resolve().parents[1]
OUT = RESULTS / "horizon"
RUNS = ROOT / "runs" / "horizon"

BASE = set_flags(ONE_FACT, steps=2000, eval_every=500)
MAC = BASE + TRAINABLE
VARIANTS = {
    "default": MAC,                                   # alpha ~ 0.018: ~55 tokens (not recorded here)
    "alpha-7": MAC + ["--memory-alpha-logit-init", "-7"],             # alpha ~ 0.0009: ~1,100 tokens
    "alpha-7-theta-3": MAC + ["--memory-alpha-logit-init", "-7", "--memory-theta-logit-init", "-3"],
    "alpha-10": MAC + ["--memory-alpha-logit-init", "-10"],           # alpha ~ 0.00005: ~22,000 tokens
    "alpha-10-theta-3": MAC + ["--memory-alpha-logit-init", "-10", "--memory-theta-logit-init", "-3"],
    # sparse writes: every step starts near 0 (theta ~ 0.0007), a learned one may reach a larger cap
    "alpha-10-theta-5-lr0.1": set_flags(MAC, memory_max_lr=0.1) + ["--memory-alpha-logit-init", "-10",
                                                                  "--memory-theta-logit-init", "-5"],
    # the momentum capped at 0.9: a write moves the weights for ~10 tokens, not for as long as eta ~ 1 lets it
    "alpha-10-eta0.9": MAC + ["--memory-alpha-logit-init", "-10", "--memory-max-momentum", "0.9", "--compile"],
    # alpha-10 with 3,000 steps (seeds 1 and 2 had not learned in 2,000), compiled
    "alpha-10-3000": set_flags(MAC, steps=3000) + ["--memory-alpha-logit-init", "-10", "--compile"],
    # chapter 9: the paper's other two variants with alpha-10's memory, and their window alone
    "mag": BASE + ["--model", "mag", "--memory-max-lr", "0.03", "--memory-alpha-logit-init", "-10"],
    "mal": BASE + ["--model", "mal", "--memory-max-lr", "0.03", "--memory-alpha-logit-init", "-10"],
    "swa": BASE + ["--model", "swa"],
    "mac_no_memory": BASE + ["--model", "mac_no_memory"],
    "full_attention": BASE + ["--model", "full_attention"],
    # the baselines trained on 128-token streams, the windows of the episodes recipe (evaluated on 2,048)
    "mac_no_memory-128": set_flags(BASE, seq_len=128, eval_distances="4,8,16,32,60,124") + ["--model", "mac_no_memory"],
    "full_attention-128": set_flags(BASE, seq_len=128, eval_distances="4,8,16,32,60,124") + ["--model", "full_attention"],
}
# a length curriculum: a finished run of VARIANTS[base], copied and resumed on longer streams for more steps
CONTINUED = {
    "alpha-10-then128": ("alpha-10", dict(seq_len=128, steps=2300, eval_every=100,
                                          eval_distances="4,8,16,32,60,124")),
    "alpha-10-then256": ("alpha-10-then128", dict(seq_len=256, steps=2500, eval_every=100,
                                                  eval_distances="4,8,16,32,60,124,252")),
    "alpha-10-3000-then128": ("alpha-10-3000", dict(seq_len=128, steps=3500, eval_every=100,
                                                    eval_distances="4,8,16,32,60,124")),
    "alpha-10-3000-then128-1500": ("alpha-10-3000", dict(seq_len=128, steps=4500, eval_every=250,
                                                         eval_distances="4,8,16,32,60,124")),
    # the longer recipe continued for 500 steps on 256-token streams: does training on longer streams work?
    "alpha-10-3000-then128-then256": ("alpha-10-3000-then128", dict(seq_len=256, steps=4000, eval_every=100,
                                                                    eval_distances="4,8,16,32,60,124,252")),
    # the recipe resumed with the memory carried across batches (truncated backpropagation through time,
    # mac_minimal.carried_state): each row restarts fresh with probability 1/16 (mean history 2,048 tokens)
    # or 1/4 (512 tokens) per step; every fact is still asked at most 124 tokens after it was written
    "alpha-10-3000-then128-carry16": ("alpha-10-3000-then128", dict(steps=4500, eval_every=250, carry_state=0.0625)),
    "alpha-10-3000-then128-carry4": ("alpha-10-3000-then128", dict(steps=4500, eval_every=250, carry_state=0.25)),
    # the memory carried and each fact asked at the end of every window of its episode (1 to E windows of
    # 128 tokens: questions up to 1,024 or 2,048 tokens after the fact); memories restart at half the episodes
    "alpha-10-3000-then128-episodes8": ("alpha-10-3000-then128", dict(steps=4500, eval_every=250, carry_state=0.5,
                                                                      episode_windows=8)),
    "alpha-10-3000-then128-episodes16": ("alpha-10-3000-then128", dict(steps=4500, eval_every=250, carry_state=0.5,
                                                                       episode_windows=16)),
    # episodes of 1-8 windows, then 1,000 steps more with episodes of 1-16 (questions up to 2,045 tokens back)
    "alpha-10-3000-then128-episodes8-then16": ("alpha-10-3000-then128-episodes8", dict(steps=5500,
                                                                                       episode_windows=16)),
    # then 1,000 steps more with the first question's distance log-uniform (4-8 tokens asked as often as
    # 64-125): the episode stages ask near distances rarely (~0.5% of questions) and seeds 1-2 lost them
    "alpha-10-3000-then128-episodes8-then16-log": ("alpha-10-3000-then128-episodes8-then16",
                                                   dict(steps=6500, episode_distances="log")),
    # and 1,000 steps more of it (seed 2 was at 0.83-0.98 after the first 1,000)
    "alpha-10-3000-then128-episodes8-then16-log2": ("alpha-10-3000-then128-episodes8-then16-log",
                                                    dict(steps=7500)),
    "alpha-10-theta-5-lr0.1-then128": ("alpha-10-theta-5-lr0.1", dict(seq_len=128, steps=2300, eval_every=100,
                                                                      eval_distances="4,8,16,32,60,124")),
}


def run_dir(name: str, seed: int) -> Path:
    return RUNS / f"{name}-s{seed}"


def command(name: str, seed: int) -> list[str]:
    """The trainer command of a variant; a continued one resumes a copy of its base run."""
    return ["python", "-m", "mac_minimal.train", *COMMON, *variant_flags(name, VARIANTS, CONTINUED),
            "--seed", str(seed),
            "--out", str(run_dir(name, seed).relative_to(ROOT))]


def finished(run: Path, steps: int) -> bool:
    """Whether the run's metrics end with the ``end`` record of step ``steps``."""
    path = run / "metrics.jsonl"
    last = json.loads(path.read_text().splitlines()[-1]) if path.exists() else {}
    return last.get("event") == "end" and last.get("step") == steps


def train(name: str, seed: int) -> None:
    """Run the variant's command unless its run finished already (a continued variant: its base run
    first, then a copy of it resumed)."""
    run, cmd = run_dir(name, seed), command(name, seed)
    if finished(run, int(cmd[cmd.index("--steps") + 1])):
        return
    shutil.rmtree(run, ignore_errors=True)
    if name in CONTINUED:
        base = CONTINUED[name][0]
        train(base, seed)
        shutil.copytree(run_dir(base, seed), run)
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=os.environ | {"OMP_NUM_THREADS": "1"})
    print(f"{name} seed {seed}: trained in {time.perf_counter() - start:.0f} s", flush=True)


def long_distances(long_len: int, train_len: int, segment: int) -> list[int]:
    """Half a segment, then doublings, the training range's end and 2x, 4x, 8x, 16x .. its length, and
    the whole stream (the fact in its first tokens)."""
    high = long_len + 1 - 4
    points = {segment // 2, segment, 2 * segment, 4 * segment, train_len - 4, high}
    points |= {train_len * m for m in (2, 4, 8, 12) if train_len * m < high}
    return sorted(points)


@contextlib.contextmanager
def shifted_alpha(model: torch.nn.Module, shift: float):
    """Add ``shift`` to every memory's forgetting logit (the bias of ``to_rates``'s third output)."""
    biases = [block.attn.memory.to_rates.bias for block in model.blocks]
    for bias in biases:
        bias.data[2] += shift
    try:
        yield
    finally:
        for bias in biases:
            bias.data[2] -= shift


@contextlib.contextmanager
def filler_theta_scaled(model: torch.nn.Module, filler_start: int, scale: float):
    """Multiply ``theta_t`` by ``scale`` wherever the input token is filler (id >= ``filler_start``), in
    every layer: with ``scale=0`` the filler writes nothing, only momentum and forgetting act there.

    Works for a whole stream in one call (the evaluation's case): each memory call writes the next
    segment, so a counter per layer says which tokens its ``y`` (b, c, d) belongs to."""
    filler, position = [None], [0] * len(model.blocks)

    def remember_tokens(_module, args):
        filler[0] = args[0] >= filler_start                                   # (b, n) bool
        position[:] = [0] * len(model.blocks)

    def scaled_rates(memory, layer):
        def rates(y):
            theta, eta, alpha = type(memory).rates(memory, y)                  # each (b, c)
            start, c = position[layer], y.shape[1]
            position[layer] += c
            keep = torch.where(filler[0][:, start:start + c], scale, 1.0)
            return theta * keep, eta, alpha
        return rates

    handle = model.register_forward_pre_hook(remember_tokens)
    for layer, block in enumerate(model.blocks):
        block.attn.memory.rates = scaled_rates(block.attn.memory, layer)
    try:
        yield
    finally:
        handle.remove()
        for block in model.blocks:
            del block.attn.memory.rates


@torch.no_grad()
def evaluate(name: str, seed: int, long: int, batches: int, alpha_shifts: list[float],
             filler_theta: list[float], eta_caps: list[float], by_length: bool, precise: int | None = None) -> dict:
    run = run_dir(name, seed)
    model, cfg, step = load_recall_run(run)
    torch.set_num_threads(1)
    long_len = long * cfg.seq_len
    distances = long_distances(long_len, cfg.seq_len, cfg.segment_len)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ends = [m for m in metrics if m["event"] == "end"]       # one per command (a continued run: two or more)
    result = {"variant": name, "seed": seed, "step": step, "command": " ".join(command(name, seed)),
              "evaluated_with": " ".join(["python", "benchmarks/memory_horizon.py", *sys.argv[1:]]),
              "train_wall_s": [round(e["wall_s"], 1) for e in ends], "train_len": cfg.seq_len, "long_len": long_len,
              "final_at_train_len": [m for m in metrics if m["event"] == "eval"][-1]["accuracy"],
              "environment": environment()}

    def accuracy(forced: str = "", num_batches: int = batches) -> dict:
        start = time.perf_counter()
        scores = evaluate_recall(model, distances, long_len, cfg.num_facts, 32, num_batches, task=cfg.recall_task)
        print(f"  {name} s{seed}{forced}: {({d: round(a, 2) for d, a in scores['accuracy'].items()})} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        return scores["accuracy"]

    result["accuracy"] = accuracy()
    if precise:            # the same streams and more of them (each distance's batches come from one seeded generator)
        result["precise"] = {"eval_batches": precise, "streams_per_distance": 32 * precise,
                             "accuracy": accuracy(f" ({precise} batches)", precise)}
    if by_length:          # the same near distances on streams 1x .. long x the training length
        near = [d for d in (8, 12, 16, 24, 40) if d <= cfg.seq_len - 4]
        result["by_stream_length"] = {
            cfg.seq_len * m: evaluate_recall(model, near, cfg.seq_len * m, cfg.num_facts, 32, batches,
                                             task=cfg.recall_task)["accuracy"]
            for m in (1, 2, 4, 8, 16) if m <= long}
        print(f"  {name} s{seed} by stream length: {result['by_stream_length']}", flush=True)
    if cfg.model == "mac":
        rates = rates_by_token(model, replace(cfg, seq_len=long_len), cfg.recall_task, distance=long_len // 2)
        result["rates"] = [{"by_type": layer["by_type"], "memory_scale": layer["memory_scale"],
                            "logit_bias": block.attn.memory.to_rates.bias.tolist()}
                           for layer, block in zip(rates["layers"], model.blocks)]
        result["forced"] = []                 # accuracy with the rates changed at evaluation only
        for shift in [0.0, *alpha_shifts]:
            for scale in [1.0, *filler_theta]:
                if (shift, scale) == (0.0, 1.0):
                    continue
                with shifted_alpha(model, shift), filler_theta_scaled(model, cfg.recall_task.filler_start, scale):
                    result["forced"].append({"alpha_logit_shift": shift, "filler_theta_scale": scale,
                                             "accuracy": accuracy(f" alpha {shift:+g}, filler theta x{scale:g}")})
        last = len(model.blocks) - 1
        for cap in eta_caps:
            for layers in (list(range(len(model.blocks))), [last]):
                with momentum_capped(model, cap, layers):
                    result["forced"].append({"eta_cap": cap, "eta_cap_layers": layers,
                                             "accuracy": accuracy(f" eta <= {cap:g} in layers {layers}")})
    write_json(OUT / f"{name}-s{seed}.json", result)
    shutil.copy(run / "metrics.jsonl", OUT / f"{name}-s{seed}.jsonl")
    return result


def main() -> None:
    parser = variant_parser(__doc__, [*VARIANTS, *CONTINUED])
    parser.set_defaults(only=list(VARIANTS))
    parser.add_argument("--train", action="store_true", help="train the runs first (finished ones are kept)")
    parser.add_argument("--long", type=int, default=16, help="evaluation streams, in training lengths")
    parser.add_argument("--eval-batches", type=int, default=4, help="batches of 32 per distance")
    parser.add_argument("--alpha-shifts", nargs="*", type=float, default=[],
                        help="also evaluate with the forgetting logit shifted by these")
    parser.add_argument("--filler-theta", nargs="*", type=float, default=[],
                        help="also evaluate with theta_t on filler tokens multiplied by these (0: filler not written)")
    parser.add_argument("--eta-caps", nargs="*", type=float, default=[],
                        help="also evaluate with the momentum eta_t clipped at these, in all layers and in the last")
    parser.add_argument("--precise", type=int, default=None, metavar="BATCHES",
                        help="also evaluate with this many batches of 32 per distance (the same first ones)")
    parser.add_argument("--by-length", action="store_true",
                        help="also: near distances (8 .. 40) on streams 1, 2, 4, 8, 16x the training length")
    args = parser.parse_args()
    if args.train or args.list:                                     # --list: print the commands only
        run_variants(args, command, train)
    if not args.list:
        run_variants(args, command, lambda name, seed: evaluate(name, seed, args.long, args.eval_batches,
                                                                args.alpha_shifts, args.filler_theta,
                                                                args.eta_caps, args.by_length, args.precise))

if __name__ == "__main__":
    main()
