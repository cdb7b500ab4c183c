"""The data of chapter 8: the recall task's layout and the byte corpus."""

import hashlib

import pytest
import torch

from mac_minimal.data import (KEY, QUERY, VALUE, RecallTask, lm_batch, lm_eval_batches, mqar_batch, mqar_min_length,
                              read_corpus, recall_batch, recall_distance_range, split_corpus, stdlib_files)

TASK = RecallTask(num_keys=8, num_values=6, num_filler=5)


def generate(seed, batch_size=4, seq_len=40, distance=20, num_facts=3):
    return recall_batch(batch_size, seq_len, distance, num_facts, torch.Generator().manual_seed(seed), TASK)


def test_recall_vocabulary_ranges_are_disjoint_and_cover_vocab():
    assert (KEY, VALUE, QUERY) == (0, 1, 2)
    assert (TASK.key_start, TASK.value_start, TASK.filler_start, TASK.vocab_size) == (3, 11, 17, 22)


def test_recall_batch_is_a_function_of_the_seed():
    a, b, c = generate(0), generate(0), generate(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.inputs, c.inputs)
    assert a.inputs.dtype == torch.int64 and a.mask.dtype == torch.bool
    assert a.inputs.shape == a.targets.shape == a.mask.shape == (4, 40)
    assert torch.equal(a.inputs[:, 1:], a.targets[:, :-1])


def facts_and_answers(inputs, targets, mask):
    """Decode one row: {key: (value position, value)} and [(answer position, key, answer)]."""
    stream = torch.cat([inputs, targets[-1:]]).tolist()
    facts = {stream[p + 1]: (p + 3, stream[p + 3]) for p in range(len(stream)) if stream[p] == KEY}
    answers = [(t + 1, stream[t - 1], targets[t].item()) for t in mask.nonzero().flatten().tolist()]
    return facts, answers


@pytest.mark.parametrize("distance", [12, 20, 29])
def test_answers_are_the_values_of_the_queried_keys_at_the_right_distance(distance):
    batch = generate(3, batch_size=6, distance=distance)
    for inputs, targets, mask in zip(*batch):
        facts, answers = facts_and_answers(inputs, targets, mask)
        assert len(facts) == len(answers) == 3
        gaps = []
        for position, key, answer in answers:
            value_position, value = facts[key]
            assert answer == value
            gaps.append(position - value_position)
        assert sum(gaps) / len(gaps) == distance
        assert min(gaps) >= distance - 4 * 2 and max(gaps) <= distance + 4 * 2
        assert max(p for p, _, _ in answers) == 40  # the last answer is the last token of the stream


def test_mask_is_only_on_answers_and_queries_are_shuffled():
    batch = generate(5, batch_size=64)
    is_query_value = (batch.inputs == VALUE) & (torch.roll(batch.inputs, 2, dims=1) == QUERY)
    assert torch.equal(batch.mask, is_query_value)
    assert (batch.mask.sum(1) == 3).all()
    assert ((batch.targets[batch.mask] >= TASK.value_start) & (batch.targets[batch.mask] < TASK.filler_start)).all()
    fact_keys = batch.inputs[:, 10:22:4]             # fact block starts at 41 - 12 - 20 = 9
    query_keys = batch.inputs[:, 30::4]              # query block: the last 12 tokens of the stream
    assert torch.equal(fact_keys.sort(1).values, query_keys.sort(1).values)
    assert not torch.equal(fact_keys, query_keys)    # some rows ask in another order


def test_filler_comes_from_its_own_range():
    batch = generate(7)
    stream = torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1)
    fact_start = 41 - 12 - 20
    outside = torch.cat([stream[:, :fact_start], stream[:, fact_start + 12 : 41 - 12]], dim=1)
    assert ((outside >= TASK.filler_start) & (outside < TASK.vocab_size)).all()


def test_recall_distance_range_and_errors():
    assert recall_distance_range(40, 3) == (12, 29)
    generate(0, distance=12), generate(0, distance=29)  # both ends are valid
    with pytest.raises(ValueError, match=r"distance must lie in \[12, 29\]"):
        generate(0, distance=30)
    with pytest.raises(ValueError, match=r"seq_len must be >= 23 .*num_facts=3.*got 10"):
        recall_distance_range(10, 3)
    with pytest.raises(ValueError, match=r"num_facts must be <= task.num_keys=8 .*got 9"):
        generate(0, num_facts=9, seq_len=80, distance=40)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        generate(0, batch_size=0)


def test_stdlib_walk_is_sorted_and_skips_third_party_code():
    files = []
    for file in stdlib_files():
        files.append(file)
        if len(files) == 200:
            break
    assert all(f.suffix == ".py" for f in files)
    assert not any(part in {"site-packages", "dist-packages", "__pycache__"} for f in files for part in f.parts)
    assert files[0].name < files[1].name  # top-level names in order before any subdirectory is entered


def test_stdlib_corpus_is_reproducible_and_hashed():
    data, digest = read_corpus(max_bytes=200_000)
    again, digest_again = read_corpus(max_bytes=200_000)
    assert len(data) == 200_000 and data == again and digest == digest_again
    assert digest == hashlib.sha256(data).hexdigest()
    first = next(stdlib_files()).read_bytes()
    assert data.startswith(first[:200_000])


def test_read_corpus_from_a_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(b"hello world, " * 10)
    data, digest = read_corpus(path, max_bytes=20)
    assert data == b"hello world, hello w" and digest == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty.txt").write_bytes(b"")
    assert read_corpus(tmp_path / "empty.txt")[0] == b""          # what a run needs is checked by the run


def test_split_of_a_short_text_keeps_a_validation_byte():
    assert [len(part) for part in split_corpus(b"ab")] == [1, 1]
    assert [len(part) for part in split_corpus(b"")] == [0, 0]


def test_split_and_lm_batches():
    data = bytes(range(100)) * 2                     # 200 bytes
    train, val = split_corpus(data, val_fraction=0.1)
    assert len(train) == 180 and len(val) == 20 and train.dtype == torch.uint8
    assert bytes(val.tolist()) == data[180:]
    batch = lm_batch(train, 5, 16, torch.Generator().manual_seed(0))
    again = lm_batch(train, 5, 16, torch.Generator().manual_seed(0))
    assert torch.equal(batch.inputs, again.inputs) and batch.inputs.shape == (5, 16)
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1]) and batch.mask.all()
    # every window is a real slice of the training bytes: consecutive byte values mod 100
    assert ((batch.targets - batch.inputs) % 100 == 1).all()
    evals = lm_eval_batches(val, batch_size=1, seq_len=4, max_batches=10)
    assert len(evals) == 4                           # windows at 0, 4, 8, 12 (each needs 5 bytes)
    assert torch.equal(torch.cat([e.inputs for e in evals]).flatten(), val[:16].long())
    with pytest.raises(ValueError, match="at least seq_len"):
        lm_batch(val, 1, 20, torch.Generator())
    with pytest.raises(ValueError, match="val_fraction"):
        split_corpus(data, 1.0)


# --- multi-query associative recall ------------------------------------------------------------

def test_mqar_pairs_open_the_stream_and_every_key_is_asked_once_for_its_value():
    task, pairs = RecallTask(), 5
    batch = mqar_batch(16, 40, pairs, torch.Generator().manual_seed(3), task)
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (16, 40)
    assert (batch.mask.sum(1) == pairs).all() and not batch.mask[:, : 2 * pairs].any()
    for row in range(16):
        keys, values = batch.inputs[row, 0 : 2 * pairs : 2], batch.inputs[row, 1 : 2 * pairs : 2]
        assert len(set(keys.tolist())) == pairs
        assert ((keys >= task.key_start) & (keys < task.value_start)).all()
        assert ((values >= task.value_start) & (values < task.filler_start)).all()
        answer_of = dict(zip(keys.tolist(), values.tolist()))
        asked = batch.inputs[row][batch.mask[row]].tolist()
        assert sorted(asked) == sorted(answer_of)                       # each key asked exactly once
        assert batch.targets[row][batch.mask[row]].tolist() == [answer_of[k] for k in asked]
        rest = batch.inputs[row, 2 * pairs :]
        query_or_answer = batch.mask[row, 2 * pairs :] | torch.roll(batch.mask[row, 2 * pairs :], 1)
        assert (rest[~query_or_answer] >= task.filler_start).all()      # filler everywhere else


def test_mqar_without_shown_answers_leaves_filler_after_each_question_and_asks_the_same():
    task = RecallTask()
    shown = mqar_batch(16, 40, 5, torch.Generator().manual_seed(3), task)
    hidden = mqar_batch(16, 40, 5, torch.Generator().manual_seed(3), task, show_answers=False)
    assert torch.equal(shown.mask, hidden.mask) and torch.equal(shown.targets[shown.mask], hidden.targets[hidden.mask])
    after_question = torch.roll(shown.mask, 1, dims=1)               # where the shown stream has the answer
    assert torch.equal(shown.inputs[after_question], shown.targets[shown.mask])
    assert (hidden.inputs[after_question] >= task.filler_start).all()   # filler there, never the value
    assert torch.equal(shown.inputs[~after_question], hidden.inputs[~after_question])   # the rest as shown


def test_mqar_batches_are_a_function_of_the_seed_and_queries_move():
    a = mqar_batch(8, 64, 4, torch.Generator().manual_seed(0))
    b = mqar_batch(8, 64, 4, torch.Generator().manual_seed(0))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.mask, b.mask)
    assert len({tuple(row.nonzero().flatten().tolist()) for row in a.mask}) > 1   # places differ by row


def test_mqar_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="seq_len must be >= 15 for num_pairs=4"):
        mqar_batch(2, 14, 4, torch.Generator())
    with pytest.raises(ValueError, match="num_pairs must be <= task.num_keys=32"):
        mqar_batch(2, 200, 33, torch.Generator())
    with pytest.raises(ValueError, match="num_pairs must be an int >= 1"):
        mqar_min_length(0)
