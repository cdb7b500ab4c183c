"""The trainer: exact resume, checkpoint checks, the NaN stop, DDP on CPU, the CLI end to end."""

import math
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

import mac_minimal.cli as cli_module
import mac_minimal.train as train_module
from mac_minimal.checkpoint import CHECKPOINT_KEYS, CheckpointError, save_checkpoint, load_trained_model
from mac_minimal.cli import main, parse_args
from mac_minimal.data import (KEY, QUERY, VALUE, Batch, RecallTask, lm_eval_batches, mqar_batch, read_corpus,
                              recall_batch)
from mac_minimal.evaluation import (beyond_segment, compute_loss, evaluate, evaluate_lm, evaluate_mqar,
                                   evaluate_recall, mqar_pair_counts)
from mac_minimal.mag import MAGTransformer
from mac_minimal.mal import MALTransformer
from mac_minimal.metrics import read_metrics
from mac_minimal.runtime import autocast, peak_memory_bytes, setup_runtime
from mac_minimal.task_data import make_batch, prepare_data
from mac_minimal.train import NonFiniteLossError, lr_factor, train
from mac_minimal.train_config import TrainConfig, build_model, count_parameters, model_config

TINY = ["--dim", "16", "--depth", "1", "--heads", "2", "--segment-len", "8", "--chunk-size", "4",
        "--num-persistent", "2", "--seq-len", "32", "--batch-size", "2", "--num-facts", "2",
        "--eval-batches", "1", "--eval-distances", "8,20", "--log-every", "1", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny(tmp_path, **overrides) -> TrainConfig:
    cfg = parse_args(TINY + ["--model", "full_attention", "--out", str(tmp_path / "run")])
    return replace(cfg, **overrides)


def losses(cfg):
    return [r["loss"] for r in read_metrics(cfg.metrics_path, "train")]


# --- schedule, loss, evaluation --------------------------------------------------------------

def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    factors = [lr_factor(s, warmup_steps=4, total_steps=20, min_ratio=0.1) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[20] == pytest.approx(0.1)
    assert factors[12] == pytest.approx(0.55)                       # half-way down the cosine
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


class Oracle(torch.nn.Module):
    """Reads the facts and answers every query right (logit 10 on the value, 0 elsewhere)."""

    def __init__(self, task=RecallTask()):
        super().__init__()
        self.vocab_size = task.vocab_size

    def forward(self, tokens, state=None):
        logits = torch.zeros(*tokens.shape, self.vocab_size)
        for row, seq in enumerate(tokens.tolist()):
            facts = {seq[p + 1]: seq[p + 3] for p in range(len(seq) - 3) if seq[p] == KEY}
            for t in range(2, len(seq)):
                if seq[t] == VALUE and seq[t - 2] == QUERY:
                    logits[row, t, facts[seq[t - 1]]] = 10.0
        return logits, None


class Constant(torch.nn.Module):
    """Logits all zero: a uniform prediction whose argmax is token 0."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, tokens, state=None):
        return torch.zeros(*tokens.shape, self.vocab_size), None


def test_evaluate_recall_scores_an_oracle_perfect_and_a_constant_model_at_zero():
    result = evaluate_recall(Oracle(), [8, 20], seq_len=32, num_facts=2, batch_size=3, num_batches=2)
    assert result["accuracy"] == {8: 1.0, 20: 1.0} and result["mean_accuracy"] == 1.0
    zero = evaluate_recall(Constant(RecallTask().vocab_size), [8], seq_len=32, num_facts=2, batch_size=3,
                           num_batches=1)
    assert zero["accuracy"] == {8: 0.0} and zero["loss"] == pytest.approx(math.log(RecallTask().vocab_size))


class PairOracle(torch.nn.Module):
    """MQAR's oracle: at every key that appeared before as a pair's key, logit 10 on that pair's value."""

    def __init__(self, task=RecallTask()):
        super().__init__()
        self.task = task

    def forward(self, tokens, state=None):
        logits = torch.zeros(*tokens.shape, self.task.vocab_size)
        for row, seq in enumerate(tokens.tolist()):
            pairs = {}
            for t, token in enumerate(seq):
                if token in pairs:
                    logits[row, t, pairs[token]] = 10.0
                elif self.task.key_start <= token < self.task.value_start and t + 1 < len(seq):
                    pairs[token] = seq[t + 1]
        return logits, None


def test_evaluate_mqar_scores_an_oracle_perfect_by_pair_count_and_a_constant_at_zero():
    result = evaluate_mqar(PairOracle(), seq_len=40, max_pairs=8, segment_len=8, batch_size=3, num_batches=2)
    assert result["accuracy"] == {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0} and result["mean_accuracy"] == 1.0
    assert result["beyond_segment"] == {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0}
    zero = evaluate_mqar(Constant(RecallTask().vocab_size), seq_len=40, max_pairs=3, segment_len=8, batch_size=3,
                         num_batches=1)
    assert list(zero["accuracy"]) == [1, 2, 3] and set(zero["accuracy"].values()) == {0.0}


def test_beyond_segment_marks_the_queries_in_a_later_segment_than_their_pair():
    task = RecallTask()
    k, v, f = task.key_start, task.value_start, task.filler_start
    #          0  1      2      3      4  5  6  7     8: asks k+1    9      10: asks k
    stream = [k, v, k + 1, v + 1, f, k, v, f, k + 1, v + 1, k, v]
    inputs = torch.tensor([stream[:-1]])
    mask = torch.zeros_like(inputs, dtype=torch.bool)
    mask[0, [5, 8, 10]] = True
    batch = Batch(inputs, torch.tensor([stream[1:]]), mask)
    assert beyond_segment(batch, num_pairs=2, segment_len=4).nonzero()[:, 1].tolist() == [5, 8, 10]
    assert beyond_segment(batch, num_pairs=2, segment_len=8).nonzero()[:, 1].tolist() == [8, 10]
    assert mqar_pair_counts(8) == [1, 2, 4, 8] and mqar_pair_counts(6) == [1, 2, 4, 6] and mqar_pair_counts(1) == [1]


def test_loss_counts_only_the_answers():
    batch = recall_batch(4, 32, 12, 2, torch.Generator().manual_seed(0))
    answer_loss = math.log1p((RecallTask().vocab_size - 1) * math.exp(-10.0))  # logit 10 on the answer
    assert compute_loss(Oracle(), batch, torch.device("cpu")).item() == pytest.approx(answer_loss, rel=1e-4)  # float32
    everywhere = batch._replace(mask=torch.ones_like(batch.mask))   # the oracle is wrong on all the rest
    assert compute_loss(Oracle(), everywhere, torch.device("cpu")).item() > 3.0


def test_evaluate_lm_of_a_uniform_model_is_eight_bits_per_byte():
    batches = lm_eval_batches(torch.arange(100, dtype=torch.uint8), batch_size=2, seq_len=10, max_batches=3)
    result = evaluate_lm(Constant(256), batches)
    assert len(batches) == 3
    assert result["bpb"] == pytest.approx(8.0) and result["loss"] == pytest.approx(math.log(256))


def test_recall_values_option_sets_the_vocabulary_and_the_batches(tmp_path):
    cfg = tiny(tmp_path, num_values=5)
    assert cfg.recall_task == RecallTask(num_values=5)
    assert prepare_data(cfg).vocab_size == 3 + 32 + 5 + 32
    batch = make_batch(cfg, prepare_data(cfg), torch.Generator().manual_seed(0))
    task = cfg.recall_task
    answers = batch.targets[batch.mask]
    assert ((answers >= task.value_start) & (answers < task.filler_start)).all()
    assert parse_args(TINY + ["--num-values", "7"]).num_values == 7
    with pytest.raises(ValueError) as info:
        tiny(tmp_path, num_values=0)
    assert all(part in str(info.value) for part in ("num_values", ">= 1", "got 0"))
    oracle = evaluate_recall(Oracle(task), [8], seq_len=32, num_facts=2, batch_size=3, num_batches=1, task=task)
    assert oracle["accuracy"] == {8: 1.0}


def test_recall_keys_option_sets_the_vocabulary(tmp_path):
    cfg = tiny(tmp_path, num_keys=4, num_facts=2)
    assert cfg.recall_task == RecallTask(num_keys=4) and prepare_data(cfg).vocab_size == 3 + 4 + 32 + 32
    batch = make_batch(cfg, prepare_data(cfg), torch.Generator().manual_seed(0))
    keys = batch.inputs[:, 1:][batch.inputs[:, :-1] == KEY]          # the token after every KEY marker
    assert len(keys) == 2 * len(batch.inputs) and ((keys >= 3) & (keys < 3 + 4)).all()
    assert parse_args(TINY + ["--num-keys", "6"]).num_keys == 6
    with pytest.raises(ValueError) as info:
        tiny(tmp_path, num_keys=2, num_facts=3)
    assert all(part in str(info.value) for part in ("--num-facts", "--num-keys=2", "got 3"))


def test_mqar_batches_draw_at_least_min_facts_pairs(tmp_path):
    cfg = tiny(tmp_path, task="mqar", num_facts=6, min_facts=4, seq_len=32, eval_distances=None)
    generator, data = torch.Generator().manual_seed(0), prepare_data(cfg)
    counts = {int(make_batch(cfg, data, generator).mask[0].sum()) for _ in range(40)}
    assert counts == {4, 5, 6}                                        # every count from min to max, no fewer
    default = tiny(tmp_path, task="mqar", num_facts=6, seq_len=32, eval_distances=None)
    assert {int(make_batch(default, data, generator).mask[0].sum()) for _ in range(60)} == set(range(1, 7))
    assert parse_args(["--task", "mqar", "--num-facts", "6", "--min-facts", "4", "--seq-len", "32"]).min_facts == 4
    for bad, task in ((7, "mqar"), (0, "mqar"), (2, "recall")):
        with pytest.raises(ValueError, match="min_facts must be"):
            tiny(tmp_path, task=task, num_facts=6, min_facts=bad, seq_len=32,
                 eval_distances=None if task == "mqar" else [8, 20])


def test_mqar_show_answers_flag_reaches_the_batches_and_the_evaluation(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, task="mqar", num_facts=4, seq_len=32, eval_distances=None, mqar_show_answers=False)
    assert parse_args(["--task", "mqar", "--no-mqar-show-answers"]).mqar_show_answers is False
    assert parse_args(["--task", "mqar"]).mqar_show_answers is True
    batch = make_batch(cfg, prepare_data(cfg), torch.Generator().manual_seed(0))
    after_question = torch.roll(batch.mask, 1, dims=1)
    assert (batch.inputs[after_question] >= cfg.recall_task.filler_start).all()   # no answer in the stream
    seen = []
    monkeypatch.setattr("mac_minimal.evaluation.mqar_batch",
                        lambda *args, **kwargs: seen.append(args[-1]) or mqar_batch(*args, **kwargs))
    hidden = evaluate(PairOracle(), cfg, prepare_data(cfg), torch.device("cpu"))
    assert set(seen) == {False} and hidden["accuracy"] == {1: 1.0, 2: 1.0, 4: 1.0}   # the keys still tell
    with pytest.raises(ValueError, match="mqar_show_answers=False needs --task mqar"):
        tiny(tmp_path, mqar_show_answers=False)


def test_memory_flags_reach_the_mac_config(capsys):
    assert parse_args(TINY).memory_scale_init == 0.0 and parse_args(TINY).memory_max_lr == 0.03
    cfg = parse_args(TINY + ["--memory-scale-init", "none", "--memory-max-lr", "0.1"])
    assert cfg.memory_scale_init is None and cfg.memory_max_lr == 0.1
    assert model_config(cfg, 64).memory_scale_init is None and model_config(cfg, 64).memory.max_lr == 0.1
    assert parse_args(TINY + ["--memory-scale-init", "0.5"]).memory_scale_init == 0.5
    memory = model_config(parse_args(TINY + ["--memory-alpha-logit-init", "-7", "--memory-theta-logit-init", "-3"]),
                          64).memory
    assert (memory.alpha_logit_init, memory.theta_logit_init) == (-7.0, -3.0)
    assert model_config(parse_args(TINY + ["--memory-max-momentum", "0.9"]), 64).memory.max_momentum == 0.9
    assert model_config(parse_args(TINY + ["--memory-max-momentum", "0"]), 64).memory.max_momentum == 0.0
    assert model_config(parse_args(TINY), 64).memory.write_norm is True
    assert model_config(parse_args(TINY + ["--no-memory-write-norm"]), 64).memory.write_norm is False
    assert model_config(parse_args(TINY), 64).memory.conv_size == 0
    for name in ("mac", "mag", "mal"):
        assert model_config(parse_args(TINY + ["--model", name, "--memory-conv-size", "4"]), 64).memory.conv_size == 4
    with pytest.raises(SystemExit):
        parse_args(TINY + ["--memory-max-momentum", "1.5"])
    assert "--memory-max-momentum must be >= 0 and <= 1, got 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(TINY + ["--memory-conv-size", "-2"])
    assert "--memory-conv-size must be an int >= 0, got -2" in capsys.readouterr().err
    assert model_config(parse_args(TINY), 64).memory_input == "output"
    assert model_config(parse_args(TINY + ["--memory-input", "input"]), 64).memory_input == "input"
    with pytest.raises(SystemExit):
        parse_args(TINY + ["--memory-input", "x"])
    assert "--memory-input: invalid choice: 'x'" in capsys.readouterr().err


def test_a_mac_with_a_memory_convolution_trains_and_resumes(tmp_path):
    cfg = tiny(tmp_path, model="mac", memory_conv_size=3, steps=3, eval_every=2)
    train(cfg)
    saved = torch.load(cfg.checkpoint_path, weights_only=True)
    assert saved["model_config"]["memory"]["conv_size"] == 3
    assert any(name.endswith("memory.conv_k") for name in saved["model"])
    train(replace(cfg, steps=4, resume=True))
    assert read_metrics(cfg.metrics_path)[-1]["step"] == 4


def test_peak_memory_is_reported_in_bytes_on_the_cpu():
    import resource
    peak = peak_memory_bytes(torch.device("cpu"))
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak in (kilobytes, kilobytes * 1024) and peak > 10 * 2**20  # a Python process with torch: > 10 MB


# --- models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dim, depth", [(48, 2), (64, 2), (96, 2), (128, 2), (128, 4), (256, 4)])
@pytest.mark.parametrize("vocab_size", [RecallTask().vocab_size, 256])
def test_models_have_the_same_parameter_budget_within_ten_percent(dim, depth, vocab_size):
    cfg = TrainConfig(dim=dim, depth=depth)
    reference = count_parameters("mac", cfg, vocab_size, dim)
    for name in ("mac_no_memory", "full_attention", "mag", "mal", "swa"):
        matched = model_config(replace(cfg, model=name), vocab_size)
        count = count_parameters(name, cfg, vocab_size, matched.dim)
        assert abs(count / reference - 1) <= 0.10, (name, matched.dim, count, reference)


def test_model_configs_from_the_registry():
    cfg = TrainConfig(dim=64)
    mac, no_memory = model_config(cfg, 99), model_config(replace(cfg, model="mac_no_memory"), 99)
    assert mac.use_memory and not no_memory.use_memory and mac.dim == 64 and no_memory.dim > 64
    assert model_config(replace(cfg, model="full_attention"), 99).vocab_size == 99


def test_autocast_is_off_on_the_cpu():
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("name", ["mac", "mac_no_memory", "full_attention", "mag", "mal", "swa"])
def test_models_run_forward_and_backward_under_bf16_autocast(name, tmp_path):
    """The CUDA path autocasts to bf16; CPU autocast exercises the same dtype handling."""
    cfg = tiny(tmp_path, model=name)
    model, _ = build_model(cfg, RecallTask().vocab_size)
    batch = recall_batch(2, 32, 12, 2, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(batch.inputs)
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- runs -----------------------------------------------------------------------------------

def test_resume_continues_exactly(tmp_path, monkeypatch):
    straight = tiny(tmp_path / "a", steps=6, eval_every=3)
    train(straight)

    class Interrupt(Exception):
        pass

    real_step, calls = train_module.train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise Interrupt
        return real_step(*args, **kwargs)

    resumed = tiny(tmp_path / "b", steps=6, eval_every=3)
    monkeypatch.setattr(train_module, "train_step", interrupted)
    with pytest.raises(Interrupt):
        train(resumed)
    assert torch.load(resumed.checkpoint_path, weights_only=True)["step"] == 3
    monkeypatch.setattr(train_module, "train_step", real_step)
    train(replace(resumed, resume=True))
    assert len(losses(straight)) == 6
    assert losses(resumed) == losses(straight)                       # exactly, not approximately
    a = torch.load(straight.checkpoint_path, weights_only=True)
    b = torch.load(resumed.checkpoint_path, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["event"] for r in read_metrics(resumed.metrics_path)].count("start") == 2


def test_a_time_limit_stops_with_an_evaluation_and_a_checkpoint_and_resume_finishes(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 10))                     # every reading of the clock is 10 s later
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: float(next(clock)))
    cfg = tiny(tmp_path, steps=20, eval_every=50, log_every=50, time_limit=25.0)
    train(cfg)
    events = read_metrics(cfg.metrics_path)
    stopped = events[-1]["step"]
    assert 1 <= stopped < 20 and events[-1]["time_limit_reached"] is True
    assert [e["event"] for e in events][-3:] == ["train", "eval", "end"]     # recorded as at a last step
    assert events[-2]["step"] == events[-3]["step"] == stopped
    assert torch.load(cfg.checkpoint_path, weights_only=True)["step"] == stopped
    train(replace(cfg, resume=True, time_limit=None))
    assert read_metrics(cfg.metrics_path)[-1]["step"] == 20
    assert read_metrics(cfg.metrics_path)[-1]["time_limit_reached"] is False


def test_time_limit_must_be_a_number_of_seconds(tmp_path):
    with pytest.raises(ValueError, match="time_limit must be >= 0, got -1"):
        tiny(tmp_path, time_limit=-1.0).__post_init__()
    assert parse_args(TINY + ["--time-limit", "90"]).time_limit == 90.0


def test_recompute_memory_trains_the_same_and_resumes_either_way(tmp_path):
    """``--recompute-memory`` changes how backward gets the memory's intermediates, not the numbers
    (the same losses, float32) nor the model config (a run resumes with or without it)."""
    kept = tiny(tmp_path / "a", model="mac", steps=4, eval_every=2)
    train(kept)
    recomputed = tiny(tmp_path / "b", model="mac", steps=4, eval_every=2, recompute_memory=True)
    train(recomputed)
    assert_close(losses(recomputed), losses(kept), rtol=1e-5, atol=1e-6)
    train(replace(kept, steps=6, resume=True, recompute_memory=True))
    assert len(losses(kept)) == 6


def test_checkpoint_of_another_model_config_is_rejected(tmp_path):
    cfg = tiny(tmp_path, steps=1)
    train(cfg)
    wider = replace(cfg, dim=32, resume=True)   # full_attention's own width follows mac's --dim
    saved, requested = model_config(cfg, 99).dim, model_config(wider, 99).dim
    with pytest.raises(CheckpointError) as only_dim:
        train(wider)
    with pytest.raises(CheckpointError) as dim_and_depth:
        train(replace(wider, depth=2))
    dim = f"dim: checkpoint {saved}, requested {requested}"
    assert dim in str(only_dim.value) and "depth" not in str(only_dim.value)     # only what differs
    assert dim in str(dim_and_depth.value) and "depth: checkpoint 1, requested 2" in str(dim_and_depth.value)
    with pytest.raises(CheckpointError, match="holds model 'full_attention', requested 'mac_no_memory'"):
        train(replace(cfg, model="mac_no_memory", resume=True))
    with pytest.raises(CheckpointError, match="exists: pass --resume"):
        train(cfg)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        train(replace(cfg, out=str(tmp_path / "elsewhere"), resume=True))


def test_a_differing_memory_field_is_named_by_its_dotted_path(tmp_path):
    cfg = tiny(tmp_path, model="mac", steps=1)
    train(cfg)
    with pytest.raises(CheckpointError) as info:
        train(replace(cfg, chunk_size=2, resume=True))
    message = str(info.value)
    assert "memory.chunk_size: checkpoint 4, requested 2" in message
    assert "{" not in message and "max_lr" not in message          # no whole memory config, no equal field


def test_a_checkpoint_older_than_a_config_field_resumes_with_its_default(tmp_path):
    """A checkpoint saved before ``memory.write_norm`` existed (its model config lacks the field) was
    trained with the default: it resumes with the default, and is refused with another value."""
    cfg = tiny(tmp_path, model="mac", steps=1)
    train(cfg)
    payload = torch.load(cfg.checkpoint_path, weights_only=True)
    del payload["model_config"]["memory"]["write_norm"]
    save_checkpoint(cfg.checkpoint_path, payload)
    with pytest.raises(CheckpointError, match="memory.write_norm: checkpoint True, requested False"):
        train(replace(cfg, steps=2, resume=True, memory_write_norm=False))
    train(replace(cfg, steps=2, resume=True))
    assert len(losses(cfg)) == 2


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss, calls = train_module.loss_and_state, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss, state = real_loss(*args, **kwargs)
        return (loss * float("nan") if len(calls) == 5 else loss), state

    monkeypatch.setattr(train_module, "loss_and_state", poisoned)
    cfg = tiny(tmp_path, steps=8, eval_every=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan .* at step 5; .* last good checkpoint is"):
        train(cfg)
    out = cfg.checkpoint_path.parent
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert set(checkpoint) == CHECKPOINT_KEYS                       # what load_checkpoint requires
    assert checkpoint["step"] == 4
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    events = read_metrics(out / "metrics.jsonl")
    assert events[-1]["event"] == "nonfinite" and events[-1]["step"] == 5
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize("error, status", [(NonFiniteLossError("non-finite loss nan"), 3),
                                           (CheckpointError("differing fields: dim"), 2)])
def test_main_turns_run_errors_into_exit_statuses_and_messages(monkeypatch, capsys, error, status):
    def failing(cfg):
        raise error

    monkeypatch.setattr(cli_module, "train", failing)
    assert main(["--no-progress"]) == status
    assert capsys.readouterr().err == f"error: {error}\n"


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def broken_save(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_lm_run_records_the_corpus_hash_and_bits_per_byte(tmp_path):
    cfg = tiny(tmp_path, task="lm", eval_distances=None, max_bytes=20_000, steps=2, eval_every=2)
    result = train(cfg)
    start = read_metrics(cfg.metrics_path, "start")[0]
    assert start["data_sha256"] == read_corpus(max_bytes=20_000)[1] and start["data_bytes"] == 20_000
    assert start["model_config"]["vocab_size"] == 256 and start["torch"] == torch.__version__
    assert result["eval"]["bpb"] == pytest.approx(result["eval"]["loss"] / math.log(2))
    assert 6.0 < result["eval"]["bpb"] < 9.0                         # about 8 bits for a fresh model


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--task", "recall", "--data", "notes.txt"])
    assert "--data is a text file for --task lm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--model", "rnn"])
    with pytest.raises(SystemExit):
        parse_args(["--seq-len", "32", "--num-facts", "2", "--eval-distances", "8,30"])
    assert "--eval-distances must lie in [8, 25]" in capsys.readouterr().err
    assert parse_args(["--model", "full_attention"]).out == os.path.join("runs", "full_attention-recall")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available"):
            setup_runtime("cuda")
    assert setup_runtime("cpu").device == torch.device("cpu")


@pytest.mark.parametrize("args, flag, expected", [
    (["--lr", "-1"], "--lr", "> 0"), (["--lr", "nan"], "--lr", "> 0"),
    (["--segment-len", "0"], "--segment-len", ">= 1"), (["--chunk-size", "0"], "--chunk-size", ">= 1"),
    (["--memory-max-lr", "0"], "--memory-max-lr", "> 0"), (["--grad-clip", "0"], "--grad-clip", "> 0"),
    (["--min-lr-ratio", "2"], "--min-lr-ratio", "<= 1"), (["--warmup-steps", "-1"], "--warmup-steps", ">= 0"),
    (["--weight-decay", "-1"], "--weight-decay", ">= 0"), (["--memory-scale-init", "inf"], "--memory-scale-init",
                                                               "finite"),
    (["--task", "lm", "--data", "/nonexistent/notes.txt"], "--data", "no such file"),
    (["--task", "lm", "--data", os.path.dirname(__file__)], "--data", "a directory"),
    (["--task", "lm", "--max-bytes", "0"], "--max-bytes", ">= 1"), (["--max-bytes", "-5"], "--max-bytes", ">= 1"),
    (["--out", __file__], "--out", "a directory"),
    (["--num-facts", "100"], "--num-facts", "<= --num-keys=32"), (["--num-facts", "0"], "--num-facts", ">= 1"),
    (["--seq-len", "1"], "--seq-len", ">= 31"),
    (["--dim", "36"], "--dim", "even"), (["--dim", "30"], "--dim", "even"), (["--heads", "3"], "--heads", "even"),
    (["--steps", "0"], "--steps", ">= 1"), (["--compile", "--model", "mag"], "--model mag", "without --compile"),
    (["--recompute-memory", "--model", "swa"], "--recompute-memory", "--model swa"),
    (["--carry-state", "0"], "--carry-state", "> 0"), (["--carry-state", "1.5"], "--carry-state", "<= 1"),
    (["--carry-state", "0.5", "--model", "full_attention"], "--carry-state", "--model mac"),
    (["--carry-state", "0.5", "--seq-len", "100"], "--carry-state", "multiple of segment_len"),
    (["--carry-state", "0.5", "--model", "mag"], "--carry-state", "--model mac"),
    (["--task", "mqar", "--eval-distances", "4"], "--eval-distances", "--task recall"),
    (["--episode-windows", "4", "--num-facts", "1"], "--episode-windows", "--carry-state"),
    (["--episode-windows", "0", "--carry-state", "1"], "--episode-windows", ">= 1"),
    (["--task", "mqar", "--num-facts", "8", "--seq-len", "30"], "--seq-len", ">= 31")])
def test_every_bad_argument_gets_one_line_and_status_2(capsys, args, flag, expected):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert flag in err and expected in err and args[-1].split("/")[-1] in err     # names what was given


TAMPERED = {  # what a checkpoint of this trainer is replaced with -> what the message must say
    "not a torch file": (lambda checkpoint: b"not a checkpoint", "not a readable checkpoint"),
    "a torch file, not ours": (lambda checkpoint: {"weights": torch.zeros(2)}, "model_config missing"),
    "our keys, a config that is a string": (lambda checkpoint: {**checkpoint, "model_config": "mac"},
                                            "model_config is a str"),
    "our config, weights of other shapes": (
        lambda checkpoint: {**checkpoint, "model": {k: torch.zeros(3) for k in checkpoint["model"]}}, "does not fit"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_corrupt_or_foreign_checkpoint_is_reported_and_kept(tmp_path, capsys, case):
    tamper, expected = TAMPERED[case]
    cfg = tiny(tmp_path, steps=1)
    train(cfg)
    content = tamper(torch.load(cfg.checkpoint_path, weights_only=True))
    if isinstance(content, bytes):
        cfg.checkpoint_path.write_bytes(content)
    else:
        torch.save(content, cfg.checkpoint_path)
    before = {path: path.read_bytes() for path in (cfg.checkpoint_path, cfg.metrics_path)}
    capsys.readouterr()
    assert main(TINY + ["--model", "full_attention", "--out", cfg.out, "--resume", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert str(cfg.checkpoint_path) in err and expected in err and "nothing was overwritten" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert {path: path.read_bytes() for path in before} == before


@pytest.mark.parametrize("text, max_bytes, given", [(b"", 4_000_000, "got 0 bytes"), (b"ab", 4_000_000, "got 2 bytes"),
                                                    (None, 10, "got 10 bytes")])    # None: the standard library
def test_a_text_too_short_for_the_run_is_one_line_and_writes_nothing(tmp_path, capsys, text, max_bytes, given):
    path, out = tmp_path / "notes.txt", tmp_path / "run"
    data = [] if text is None else ["--data", str(path)]
    path.write_bytes(text or b"")
    assert main(["--task", "lm", "--max-bytes", str(max_bytes), "--out", str(out)] + data) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()
    assert "--data" in err and "--max-bytes" in err and "--seq-len 128" in err and "129 bytes" in err and given in err


# --- the command line, as a user runs it ------------------------------------------------------

def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120, **kwargs)


def test_help():
    result = run([sys.executable, "-m", "mac_minimal.train", "--help"])
    assert result.returncode == 0
    for flag in ("--model", "--task", "--device", "--resume", "--eval-every", "--no-progress"):
        assert flag in result.stdout


def test_cli_trains_mac_on_recall_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run([sys.executable, "-m", "mac_minimal.train", "--model", "mac", "--steps", "3",
                  "--eval-every", "2", "--out", str(out)] + TINY)
    assert result.returncode == 0, result.stderr
    assert "mac: " in result.stdout and "recall accuracy" in result.stdout
    events = read_metrics(out / "metrics.jsonl")
    assert [e["event"] for e in events] == ["start", "eval", "train", "train", "eval", "train", "eval", "end"]
    assert events[0]["device"].startswith("cpu") and events[0]["model_config"]["use_memory"] is True
    assert set(events[-2]["accuracy"]) == {"8", "20"}
    assert all(e["tokens_per_s"] > 0 for e in events if e["event"] in ("train", "end"))
    assert events[-1]["peak_memory_bytes"] > 10 * 2**20
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_gloo_keep_identical_parameters(tmp_path):
    out = tmp_path / "ddp"
    result = run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                  "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                  "-m", "mac_minimal.train", "--model", "full_attention", "--steps", "3", "--eval-every", "3",
                  "--device", "cpu", "--out", str(out)] + TINY)
    assert result.returncode == 0, result.stderr
    events = read_metrics(out / "metrics.jsonl")
    assert events[0]["world_size"] == 2 and events[-1]["event"] == "end"
    assert events[-1]["rank_parameter_spread"] == 0.0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(checkpoint["rng"]) == 2
    assert not torch.equal(checkpoint["rng"][0]["data"], checkpoint["rng"][1]["data"])  # one stream per rank


def test_a_trained_model_loads_from_its_checkpoint_with_its_config(tmp_path):
    """load_trained_model: the weights, the run's TrainConfig and the step of the checkpoint; eval mode.
    A missing or unreadable file is a CheckpointError naming the path."""
    cfg = tiny(tmp_path, model="mac", steps=2, eval_every=2)
    train(cfg)
    model, loaded_cfg, step = load_trained_model(cfg.checkpoint_path)
    saved = torch.load(cfg.checkpoint_path, weights_only=True)["model"]
    assert step == 2 and loaded_cfg == cfg and not model.training
    assert all(torch.equal(saved[name], tensor) for name, tensor in model.state_dict().items())
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_trained_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt is not a readable checkpoint"):
        load_trained_model(tmp_path / "junk.pt")


@pytest.mark.parametrize("name, cls", [("mag", MAGTransformer), ("mal", MALTransformer), ("swa", MAGTransformer)])
def test_titans_variants_train_and_load_from_their_checkpoints(tmp_path, name, cls):
    """MAG, MAL and sliding-window attention through the trainer: the window is --segment-len, the memory
    flags reach the memory, and load_trained_model gives back the trained weights."""
    cfg = tiny(tmp_path, model=name, steps=2, eval_every=2, chunk_size=2, memory_max_lr=0.05)
    config = model_config(cfg, RecallTask().vocab_size)
    assert config.window == 8 and (config.memory.chunk_size, config.memory.max_lr) == (2, 0.05)
    assert getattr(config, "use_memory", True) == (name != "swa")         # MAL has no use_memory: it is its memory
    result = train(cfg)
    assert set(result["eval"]["accuracy"]) == {8, 20}
    model, loaded_cfg, step = load_trained_model(cfg.checkpoint_path)
    saved = torch.load(cfg.checkpoint_path, weights_only=True)["model"]
    assert isinstance(model, cls) and step == 2 and loaded_cfg == cfg and not model.training
    assert all(torch.equal(saved[key], tensor) for key, tensor in model.state_dict().items())
