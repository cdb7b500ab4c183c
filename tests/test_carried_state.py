"""Training with the state carried across batches (--carry-state): restarts, truncation, equality
with one long call, and the trainer end to end."""

import pytest
import torch

from mac_minimal.carried_state import detach_state, next_state, restart_rows
from mac_minimal.cli import parse_args
from mac_minimal.metrics import read_metrics
from mac_minimal.model import MACConfig, MACTransformer
from mac_minimal.neural_memory import NeuralMemoryConfig
from mac_minimal.train import train


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
    state = next_state(model, None, 3, 0.5, torch.Generator().manual_seed(0))    # first batch: fresh
    first, state = model(tokens[:, :8], state)
    carried = restart_rows(detach_state(state), model.init_state(3), torch.zeros(3, dtype=torch.bool))
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


def test_restart_probability_one_restarts_every_row_and_a_small_one_few():
    model, tokens = small_mac(), torch.randint(0, 11, (64, 8))
    _, state = model(tokens)
    fresh = next_state(model, state, 64, 1.0, torch.Generator().manual_seed(0))
    for got, want in zip(tensors(fresh), tensors(model.init_state(64))):
        torch.testing.assert_close(got, want.expand_as(got), rtol=0, atol=0)
    weights = next_state(model, state, 64, 0.1, torch.Generator().manual_seed(0)).layers[0].memory.weights[0]
    restarted = (weights == model.init_state(64).layers[0].memory.weights[0]).flatten(1).all(1)
    assert 1 <= int(restarted.sum()) <= 16                             # about 6 of 64


def test_shapes_that_differ_are_named():
    model = small_mac()
    _, half_segment = model(torch.randint(0, 11, (2, 6)))             # 6 tokens: a segment left open
    with pytest.raises(ValueError, match="segment and chunk edges"):
        restart_rows(half_segment, model.init_state(2), torch.tensor([True, False]))


@pytest.mark.parametrize("carry", [None, 0.25])
def test_the_trainer_carries_the_state_reproducibly(tmp_path, carry):
    args = ["--dim", "16", "--depth", "1", "--heads", "2", "--segment-len", "8", "--chunk-size", "4",
            "--num-persistent", "2", "--seq-len", "32", "--batch-size", "4", "--num-facts", "1", "--steps", "4",
            "--eval-every", "4", "--eval-batches", "1", "--log-every", "1", "--no-progress", "--device", "cpu"]
    if carry is not None:
        args += ["--carry-state", str(carry)]
    runs = []
    for name in ("a", "b"):
        cfg = parse_args(args + ["--out", str(tmp_path / name)])
        train(cfg)
        runs.append([r["loss"] for r in read_metrics(cfg.metrics_path, "train")])
    assert len(runs[0]) == 4 and runs[0] == runs[1]
