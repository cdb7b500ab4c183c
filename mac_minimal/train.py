"""Chapter 8's training loop. Its command line is ``python -m mac_minimal --help`` (:mod:`~mac_minimal.cli`).

Trains ``mac``, ``mac_no_memory``, ``full_attention``, ``mag``, ``mal`` or ``swa`` at one parameter
budget (:mod:`~mac_minimal.train_config`) on ``recall`` (key-value facts far back in filler, accuracy
on the answers, swept over distance), ``mqar`` (many pairs, each asked once, accuracy against the
number of pairs) or ``lm`` (bytes of the Python standard library or of any file, validation bits
per byte), on a CPU, a GPU, or under ``torchrun`` on several GPUs.

Every training choice, briefly:

* **AdamW** (Loshchilov & Hutter 2019): Adam's per-parameter step sizes with weight decay applied
  to the weights directly rather than through the gradient; decay only on matrices (``dim >= 2``),
  since shrinking norms' gains and biases towards 0 only hurts.
* **Linear warmup**: Adam's second-moment estimates are noisy over the first steps, and a full-size
  step on them can throw a fresh transformer into a bad region; ramping the rate up avoids that.
* **Cosine decay** to ``min_lr_ratio * lr``: large steps early for progress, small ones late to
  settle into a minimum; the cosine does this smoothly with one knob (the run's length).
* **Gradient clipping** (global norm): one unlucky batch (or the memory's inner loop amplifying a
  gradient) cannot make one huge update; clipping bounds the step without changing its direction.
* **bf16 autocast on CUDA only** (:func:`~mac_minimal.runtime.autocast`): weights, optimizer state
  and the loss stay float32, and so does the neural memory, whose test-time gradient steps bf16
  would round away (:func:`~mac_minimal.neural_memory.full_precision`); CPU runs stay float32.
* **Fixed seeds and saved RNG states**: the model is initialised from ``--seed``; the data comes
  from its own generator (one per rank) whose state is checkpointed, so an interrupted run resumed
  with ``--resume`` computes, on a CPU, exactly the losses of the uninterrupted one
  (:mod:`~mac_minimal.checkpoint`; checkpoints are written atomically).
* **A non-finite loss stops the run** (:class:`NonFiniteLossError`, exit status 3) before the
  optimizer applies the bad step; the last checkpoint on disk is the last good state.
* **``--compile``** (off by default): :func:`~mac_minimal.compiled.compile_regions` compiles every
  attention layer (MAC: one call per segment) with ``torch.compile``, in place, so the first steps
  pay for compiling a few graphs and the later ones run fused kernels; parameter names, and so
  checkpoints, are the same with or without it (a run may be resumed either way). Evaluation runs
  eagerly (``torch.compiler.set_stance("force_eager")``): under ``torch.no_grad()`` it would need
  graphs of its own, one more compile at the start of every run, for work done only every
  ``eval_every`` steps (chapter 7 records what the evaluations of a run cost eagerly).
* **``--time-limit S``** (off by default): stop once ``S`` seconds of wall time have passed
  (compiling and evaluations included), with an evaluation, a checkpoint and the ``end`` record
  (``time_limit_reached``) as after the last step; the learning rate's schedule stays that of
  ``--steps``, so a run cut short ends before its rate has decayed. For runs that share a
  machine for a fixed time (``benchmarks/gpu_record.py``).
* **``--recompute-memory``** (off by default; ``mac``, ``mag``, ``mal``):
  :func:`~mac_minimal.neural_memory.recompute_writes`: backward runs each memory write again
  instead of keeping its intermediates, for a step that needs less memory and a little more time;
  the same numbers, the same checkpoints.
* **``--carry-state P``** (off by default; ``mac`` only): each batch continues the streams of the
  last one, the memory carried over and detached (truncated backpropagation through time,
  :mod:`~mac_minimal.carried_state`), each row restarting fresh with probability ``P`` per step, so
  the memory meets the long histories it will meet on long streams. With ``--episode-windows E``
  each row's fact is asked at the end of every window for 1 to ``E`` windows
  (:class:`~mac_minimal.carried_state.RecallEpisodes`), so questions reach back across the cut.
  The carried state and the episodes are not checkpointed: a resumed run restarts them fresh.
* **Distributed data parallel** (:mod:`~mac_minimal.runtime`): under ``torchrun
  --nproc_per_node=N`` each process trains on its own data stream, gradients are averaged across
  processes, and only rank 0 writes.

Outputs in ``--out`` (default ``runs/MODEL-TASK``): ``checkpoint.pt`` and ``metrics.jsonl``, one
JSON object per line (``event`` = start / train / eval / nonfinite / end), read by
:func:`~mac_minimal.metrics.read_metrics`; an ``eval`` record holds the scores and the seconds the
evaluation took (``eval_s``), the ``end`` record the run's training throughput (tokens/s,
evaluation excluded) and peak memory. The flags, exit statuses and error messages are
:mod:`~mac_minimal.cli`'s; the batches come from :mod:`~mac_minimal.task_data`, the loss and the
scores from :mod:`~mac_minimal.evaluation`.
"""

import math
import platform
import runpy
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mac_minimal.checkpoint import (CheckpointError, checkpoint_contents, load_checkpoint, restore, rng_state,
                                    save_checkpoint)
from mac_minimal.compiled import compile_regions
from mac_minimal.data import Batch
from mac_minimal.carried_state import RecallEpisodes, next_state
from mac_minimal.evaluation import evaluate, loss_and_state
from mac_minimal.layers import num_parameters
from mac_minimal.metrics import start_metrics, write_metrics
from mac_minimal.neural_memory import recompute_writes
from mac_minimal.runtime import (Runtime, average_over_processes, close_runtime, data_parallel, device_name,
                                 gather_objects, parameter_spread, peak_memory_bytes, reset_peak_memory,
                                 setup_runtime)
from mac_minimal.task_data import TaskData, data_seed, make_batch, prepare_data
from mac_minimal.train_config import REFERENCE_MODEL, TrainConfig, build_model, count_parameters

__all__ = ["NonFiniteLossError", "lr_factor", "make_optimizer", "train_step", "train"]

if __name__ == "__main__":
    # ``python -m mac_minimal.train``, the spelling of the recorded commands, is ``python -m mac_minimal``:
    # run the package's entry point (``mac_minimal/__main__.py``, which exits). Running it by name keeps
    # this module from importing the command line, which imports it. It runs here, before this copy of
    # the module (``__main__``) defines classes: the command line trains with ``mac_minimal.train``'s.
    runpy.run_module("mac_minimal", run_name="__main__")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the step was not applied."""


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warmup from ``1 / warmup_steps``
    to 1, then a half cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device
                   ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (decay on matrices only) and the warmup + cosine schedule as a LambdaLR."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    schedule = partial(lr_factor, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_ratio=cfg.min_lr_ratio)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
               batch: Batch, cfg: TrainConfig, runtime: Runtime, step: int, state: Any = None
               ) -> tuple[float, float, Any]:
    """One optimizer step on ``batch`` ((b, n) tokens), the model starting from ``state`` (None: fresh);
    returns (loss, gradient norm before clipping), averaged over processes, and the state after the batch.

    Raises :class:`NonFiniteLossError` before the update if either is NaN or infinite (every
    process sees the same averaged values, so all of them stop together).
    """
    optimizer.zero_grad(set_to_none=True)
    loss, state = loss_and_state(model, batch, runtime.device, state)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    stats = average_over_processes(torch.stack([loss.detach().float(), grad_norm.float()]), runtime)
    loss_value, norm_value = stats.tolist()
    if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
        raise NonFiniteLossError(f"non-finite loss {loss_value} (gradient norm {norm_value}) at step {step + 1}")
    optimizer.step()
    scheduler.step()
    return loss_value, norm_value, state


@dataclass
class Run:
    """Everything a run holds while it trains (``trained`` is ``model`` itself or its DDP wrapper)."""

    cfg: TrainConfig
    runtime: Runtime
    data: TaskData
    config: Any
    model: nn.Module
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator


def start_run(cfg: TrainConfig, runtime: Runtime) -> tuple[Run, int]:
    """Build data, model and optimizer from the seeds, restore the checkpoint on ``--resume``,
    print the parameter counts and begin the metrics file; returns the run and its first step."""
    if not cfg.resume and cfg.checkpoint_path.exists():
        raise CheckpointError(f"{cfg.checkpoint_path} exists: pass --resume to continue it, or another --out")
    data = prepare_data(cfg)
    torch.manual_seed(cfg.seed)                      # the same initial weights on every rank
    model, config = build_model(cfg, data.vocab_size)
    model.to(runtime.device)
    if cfg.recompute_memory:
        recompute_writes(model)
    if cfg.compile:
        compile_regions(model)
    optimizer, scheduler = make_optimizer(model, cfg, runtime.device)
    generator = torch.Generator().manual_seed(data_seed(cfg.seed, runtime.rank))
    step = 0
    if cfg.resume:
        payload = load_checkpoint(cfg.checkpoint_path, cfg.model, config)
        step = restore(cfg.checkpoint_path, payload, model, optimizer, scheduler, generator, runtime)
    trained = data_parallel(model, runtime)
    if runtime.is_main:
        parameters = num_parameters(model)
        reference = count_parameters(REFERENCE_MODEL, cfg, data.vocab_size, cfg.dim)
        print(f"{cfg.model}: {parameters:,} parameters (dim {config.dim}; "
              f"{REFERENCE_MODEL} reference {reference:,}) on {device_name(runtime.device)}"
              + (f" x {runtime.world_size} processes" if runtime.world_size > 1 else ""), flush=True)
        start_metrics(cfg.metrics_path, {
            "event": "start", "step": step, "resumed": cfg.resume, "model": cfg.model, "task": cfg.task,
            "parameters": parameters, "reference_parameters": reference, "model_config": asdict(config),
            "train_config": asdict(cfg), "device": device_name(runtime.device), "world_size": runtime.world_size,
            "torch": torch.__version__, "python": platform.python_version(), "data_sha256": data.sha256,
            "data_bytes": None if data.train_tokens is None else len(data.train_tokens) + len(data.val_tokens)},
            resume=cfg.resume)
    return Run(cfg, runtime, data, config, model, trained, optimizer, scheduler, generator), step


def next_batch(run: Run, episodes: RecallEpisodes | None, state: Any) -> tuple[Batch, Any]:
    """The next training batch and the state the model starts it from: None (fresh) by default;
    with ``--carry-state P`` the last batch's state, each row restarted with probability ``P``
    (with ``--episode-windows``: only where its episode starts)."""
    cfg = run.cfg
    if episodes is not None:
        batch, starts = episodes.next(run.generator)
    else:
        batch, starts = make_batch(cfg, run.data, run.generator), torch.ones(cfg.batch_size, dtype=torch.bool)
    if cfg.carry_state is None:
        return batch, None
    if state is None:                                                   # the first batch
        return batch, run.model.init_state(cfg.batch_size)
    restart = starts & (torch.rand(cfg.batch_size, generator=run.generator) < cfg.carry_state)
    return batch, next_state(run.model, state, restart)


def evaluate_and_save(run: Run, step: int) -> dict[str, Any]:
    """Evaluate and checkpoint on rank 0 (every rank must call it: the random states are gathered);
    returns the evaluation (empty on other ranks)."""
    rng = gather_objects(rng_state(run.generator, run.runtime.device), run.runtime)
    if not run.runtime.is_main:
        return {}
    cfg = run.cfg
    tick = time.perf_counter()
    with torch.compiler.set_stance("force_eager"):   # with --compile too: see the module's docstring
        result = evaluate(run.model, cfg, run.data, run.runtime.device)
    write_metrics(cfg.metrics_path, {"event": "eval", "step": step, "eval_s": time.perf_counter() - tick, **result})
    save_checkpoint(cfg.checkpoint_path, checkpoint_contents(step, cfg, run.config, run.model, run.optimizer,
                                                             run.scheduler, rng))
    summary = result.get("bpb", result.get("mean_accuracy"))
    tqdm.write(f"step {step}: {'val bpb' if cfg.task == 'lm' else f'{cfg.task} accuracy'} {summary:.4f}")
    return result


def time_is_up(started: float, time_limit: float | None, runtime: Runtime) -> bool:
    """Whether ``time_limit`` seconds (None: never) have passed since ``started`` (``time.perf_counter``)
    on any process: with several, every one gets the same answer, so they stop at the same step."""
    if time_limit is None:
        return False
    up = time.perf_counter() - started >= time_limit
    if runtime.world_size == 1:
        return up
    return bool(average_over_processes(torch.tensor([float(up)], device=runtime.device), runtime).item() > 0)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the last evaluation, the step and
    ``rank_parameter_spread`` (how far the processes' parameters drifted apart; 0 with one process).

    Raises :class:`~mac_minimal.runtime.DeviceUnavailableError` for ``cuda`` without CUDA;
    :class:`~mac_minimal.task_data.DataError` for an ``lm`` text too short for ``seq_len``;
    :class:`~mac_minimal.checkpoint.CheckpointError` for a checkpoint that is missing (``--resume``),
    would be overwritten (no ``--resume``), is foreign or does not match; :class:`NonFiniteLossError`
    on a NaN/inf. The first three are raised before anything is written.
    """
    runtime = setup_runtime(cfg.device)
    try:
        return train_loop(cfg, runtime)
    finally:
        close_runtime(runtime)


def train_loop(cfg: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    """The loop: a batch, a step, a train record every ``log_every`` steps, an evaluation and a
    checkpoint every ``eval_every``, until ``cfg.steps``; then the ``end`` record."""
    reset_peak_memory(runtime.device)
    run, step = start_run(cfg, runtime)
    result = evaluate_and_save(run, 0) if step == 0 else {}  # the untrained score starts every curve
    started, window_loss, window_time, train_time, first_step = time.perf_counter(), [], 0.0, 0.0, step
    state = None                                 # the model's state carried between batches (--carry-state)
    episodes = (None if cfg.episode_windows is None
                else RecallEpisodes(cfg.batch_size, cfg.seq_len, cfg.episode_windows, cfg.recall_task,
                                    cfg.episode_distances))
    tokens_per_step = cfg.batch_size * cfg.seq_len * runtime.world_size
    bar = tqdm(total=cfg.steps, initial=step, disable=True if not (cfg.progress and runtime.is_main) else None,
               unit="step", dynamic_ncols=True)
    while step < cfg.steps:
        tick = time.perf_counter()
        batch, state = next_batch(run, episodes, state)
        batch = batch.to(runtime.device)
        try:
            loss, grad_norm, state = train_step(run.trained, run.optimizer, run.scheduler, batch, cfg, runtime,
                                                step, state)
        except NonFiniteLossError as error:
            if runtime.is_main:
                write_metrics(cfg.metrics_path, {"event": "nonfinite", "step": step + 1, "message": str(error)})
            raise NonFiniteLossError(f"{error}; stopped without applying it. The last good checkpoint is "
                                     f"{cfg.checkpoint_path}") from None
        step += 1
        window_time += time.perf_counter() - tick
        train_time += time.perf_counter() - tick
        window_loss.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_step / (time.perf_counter() - tick):.0f}")
        stop = time_is_up(started, cfg.time_limit, runtime)
        if step % cfg.log_every == 0 or step == cfg.steps or stop:
            if runtime.is_main:  # the mean loss since the last record; tokens/s over train steps only
                write_metrics(cfg.metrics_path, {
                    "event": "train", "step": step, "loss": sum(window_loss) / len(window_loss),
                    "lr": run.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                    "tokens_per_s": tokens_per_step * len(window_loss) / window_time,
                    "elapsed_s": time.perf_counter() - started})
            window_loss, window_time = [], 0.0
        if step % cfg.eval_every == 0 or step == cfg.steps or stop:
            result = evaluate_and_save(run, step)
        if stop:
            break
    bar.close()
    spread = parameter_spread(run.model, runtime)
    if runtime.is_main:
        write_metrics(cfg.metrics_path, {  # tokens/s over the train steps of this process (no evaluation)
            "event": "end", "step": step, "wall_s": time.perf_counter() - started, "rank_parameter_spread": spread,
            "time_limit_reached": step < cfg.steps,
            "tokens_per_s": tokens_per_step * (step - first_step) / train_time if train_time > 0 else None,
            "peak_memory_bytes": peak_memory_bytes(runtime.device)})
    return {"step": step, "eval": result, "rank_parameter_spread": spread}
