"""Training with the state carried across batches (--carry-state): restarts, truncation, equality
with one long call, and the trainer end to end."""

import math

import pytest
import torch

from mac_minimal.carried_state import RecallEpisodes, detach_state, next_state, restart_rows
from mac_minimal.data import KEY, QUERY, VALUE, RecallTask
from mac_minimal.cli import parse_args
from mac_minimal.metrics import read_metrics
from mac_minimal.model import MACConfig, MACTransformer
from mac_minimal.neural_memory import NeuralMemoryConfig
import mac_minimal.train as train_module
from mac_minimal.train import train
from mac_minimal.train_config import build_model


def small_mac() -> MACTransformer:
    torch.manual_seed(0)
    config = MACConfig(vocab_size=11, dim=16, heads=2, segment_len=4, num_persistent=2, depth=2,
                       memory=NeuralMemoryConfig(chunk_size=2))
    return MACTransformer(config).double()


def tensors(state):
    """Every tensor of a (nested) state, in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, tuple):
        return [t for item in state for t in tensors(item)]
    return []


def test_carrying_the_state_gives_the_logits_of_one_long_call():
    model, tokens = small_mac(), torch.randint(0, 11, (3, 16))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :8], model.init_state(3))
    carried = next_state(model, state, torch.zeros(3, dtype=torch.bool))
    second, _ = model(tokens[:, 8:], carried)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=1e-10)


def test_restarted_rows_start_fresh_and_the_others_continue():
    model, tokens = small_mac(), torch.randint(0, 11, (3, 16))
    _, state = model(tokens[:, :8])
    restart = torch.tensor([True, False, True])
    second, _ = model(tokens[:, 8:], restart_rows(state, model.init_state(3), restart))
    alone, _ = model(tokens[:, 8:])                                   # every row fresh
    continued, _ = model(tokens[:, 8:], state)                        # every row carried
    torch.testing.assert_close(second[restart], alone[restart], rtol=0, atol=1e-10)
    torch.testing.assert_close(second[~restart], continued[~restart], rtol=0, atol=1e-10)
    assert not torch.allclose(alone[1], continued[1])                 # the history matters


def test_the_carried_state_is_cut_from_the_last_batch_graph():
    model, tokens = small_mac(), torch.randint(0, 11, (2, 8))
    logits, state = model(tokens)
    logits.sum().backward()                                           # frees batch 1's graph
    carried = restart_rows(detach_state(state), model.init_state(2), torch.zeros(2, dtype=torch.bool))
    logits, _ = model(tokens, carried)
    logits.sum().backward()             # would raise (backward through a freed graph) if the state were not cut
    logits, state = model(tokens)
    logits.sum().backward()
    with pytest.raises(RuntimeError, match="second time"):            # the same without the cut
        model(tokens, state)[0].sum().backward()


def test_restarted_rows_get_the_learned_initial_memory():
    model, tokens = small_mac(), torch.randint(0, 11, (4, 8))
    _, state = model(tokens)
    fresh = next_state(model, state, torch.ones(4, dtype=torch.bool))
    for got, want in zip(tensors(fresh), tensors(model.init_state(4))):
        torch.testing.assert_close(got, want.expand_as(got), rtol=0, atol=0)


def test_shapes_that_differ_are_named():
    model = small_mac()
    _, half_segment = model(torch.randint(0, 11, (2, 6)))             # 6 tokens: a segment left open
    with pytest.raises(ValueError, match="segment and chunk edges"):
        restart_rows(half_segment, model.init_state(2), torch.tensor([True, False]))


def test_an_episode_writes_its_fact_once_and_asks_it_at_the_end_of_each_of_its_windows():
    task, n = RecallTask(), 24
    episodes, generator = RecallEpisodes(64, n, max_windows=3, task=task), torch.Generator().manual_seed(0)
    windows = [episodes.next(generator) for _ in range(12)]
    lengths = []
    for row in range(64):
        age = None                                         # windows since the row's episode began
        for batch, starts in windows:
            inputs, target = batch.inputs[row], batch.targets[row][batch.mask[row]]
            assert batch.mask[row].nonzero().flatten().tolist() == [n - 1]
            assert inputs[n - 3].item() == QUERY and inputs[n - 1].item() == VALUE
            key = inputs[n - 2].item()
            facts = [t for t in range(n - 4) if inputs[t] == KEY]
            if starts[row]:
                if age is not None:
                    lengths.append(age + 1)                                 # the episode that ended
                age, episode = 0, (key, target.item())
                assert len(facts) == 1 and inputs[facts[0] + 1] == key and inputs[facts[0] + 3] == target
                assert 4 <= (n - 3) - facts[0] <= n - 3                     # the distance range of the task
            else:
                age += 1
                assert facts == [] and (key, target.item()) == episode    # the same fact, asked again
            assert task.key_start <= key < task.value_start
    assert set(lengths) == {1, 2, 3}                                      # 1 .. max_windows windows


def test_log_distances_ask_every_scale_equally_often():
    n, rows = 128, 20_000
    episodes, generator = RecallEpisodes(rows, n, max_windows=1, distances="log"), torch.Generator().manual_seed(0)
    batch, starts = episodes.next(generator)
    assert starts.all()
    distance = (n - 3) - (batch.inputs == KEY).int().argmax(1)           # question start - fact start
    assert distance.min() == 4 and distance.max() == n - 3                # the task's whole range
    share = lambda low, high: ((distance >= low) & (distance < high)).float().mean().item()
    for low in (4, 8, 16, 32, 64):                                        # each doubling: log 2 / log(126 / 4)
        assert abs(share(low, 2 * low) - math.log(2) / math.log((n - 2) / 4)) < 0.015
    uniform, _ = RecallEpisodes(rows, n, max_windows=1).next(torch.Generator().manual_seed(0))
    near = ((n - 3) - (uniform.inputs == KEY).int().argmax(1) < 8).float().mean().item()
    assert abs(near - 4 / (n - 6)) < 0.01                                 # uniform: 4 of 122 distances


def test_episode_distances_must_be_named_and_need_episodes():
    with pytest.raises(ValueError, match="distances must be one of"):
        RecallEpisodes(2, 16, 2, distances="exp")
    with pytest.raises(SystemExit):
        parse_args(["--episode-distances", "log"])


def test_with_episodes_rows_restart_exactly_where_an_episode_starts(tmp_path):
    cfg = parse_args(["--dim", "16", "--depth", "1", "--heads", "2", "--segment-len", "8", "--chunk-size", "4",
                      "--num-persistent", "2", "--seq-len", "16", "--batch-size", "32", "--num-facts", "1",
                      "--carry-state", "1", "--episode-windows", "4", "--out", str(tmp_path)])
    model, _ = build_model(cfg, cfg.recall_task.vocab_size)
    run = train_module.Run(cfg, None, None, None, model, model, None, None, torch.Generator().manual_seed(0))
    episodes = RecallEpisodes(32, 16, 4)
    batch, state = train_module.next_batch(run, episodes, None)
    initial = model.init_state(32).layers[0].memory.weights[0]
    for _ in range(4):
        with torch.no_grad():
            _, state = model(batch.inputs, state)
        before = state.layers[0].memory.weights[0]
        batch, state = train_module.next_batch(run, episodes, state)
        starts = (batch.inputs == KEY).any(1)                 # a fact in the window: its episode starts here
        after = state.layers[0].memory.weights[0]
        assert (after[starts] == initial[starts]).all() and (after[~starts] == before[~starts]).all()
        assert starts.any() and not starts.all()


@pytest.mark.parametrize("carry", [[], ["--carry-state", "0.25"], ["--carry-state", "0.5", "--episode-windows", "3"]])
def test_the_trainer_carries_the_state_reproducibly(tmp_path, carry):
    args = ["--dim", "16", "--depth", "1", "--heads", "2", "--segment-len", "8", "--chunk-size", "4",
            "--num-persistent", "2", "--seq-len", "32", "--batch-size", "4", "--num-facts", "1", "--steps", "4",
            "--eval-every", "4", "--eval-batches", "1", "--log-every", "1", "--no-progress", "--device", "cpu"]
    args += carry
    runs = []
    for name in ("a", "b"):
        cfg = parse_args(args + ["--out", str(tmp_path / name)])
        train(cfg)
        runs.append([r["loss"] for r in read_metrics(cfg.metrics_path, "train")])
    assert len(runs[0]) == 4 and runs[0] == runs[1]
