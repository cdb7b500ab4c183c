"""The experiment scripts of chapter 8 run end to end at toy sizes (their recorded results are in book/results)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_gpu_record_smoke_writes_speed_and_runs(tmp_path):
    run("benchmarks/gpu_record.py", "--smoke", "--only", "one_fact", "--out", str(tmp_path))
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["smoke"] and {"mac", "mac_no_memory"} <= set(speed["rows"][0]["step_s"])
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert [r["model"] for r in runs] == ["mac", "mac_no_memory", "full_attention", "mag", "mal", "swa"]
    for r in runs:
        assert r["finished"] and r["steps"] == 6 and set(r["final"]) == {"4", "28"}
        assert (tmp_path / f"{r['model']}-one_fact.jsonl").exists()
    assert not (tmp_path / "runs").exists()                          # checkpoints are not kept


@pytest.mark.parametrize("script, variants", [("memory_horizon", ["alpha-10", "alpha-10-3000-then128-episodes8-then16-log"]),
                                               ("mqar", ["full_attention", "mac"]),
                                               ("mac_trainability", ["mac", "scale0-lr0.03"])])
def test_variant_scripts_list_one_trainer_command_per_variant_and_seed(script, variants):
    lines = run(f"benchmarks/{script}.py", "--list", "--only", *variants, "--seeds", "0", "3").stdout.splitlines()
    assert len(lines) == 4 and all("-m mac_minimal.train " in line for line in lines)
    assert [line.split("--seed ")[1].split()[0] for line in lines] == ["0", "3", "0", "3"]
    assert "runs/" in lines[1] and lines[1].split("--out ")[1].endswith("-s3")


def test_gpu_record_smoke_runs_the_long_horizon_recipe_and_mqar_in_parallel(tmp_path):
    run("benchmarks/gpu_record.py", "--smoke", "--only", "long_horizon", "mqar", "mqar_input", "--parallel", "3",
        "--out", str(tmp_path))
    record = json.loads((tmp_path / "runs.json").read_text())
    runs = record["runs"]
    assert record["parallel"] == 3 and not record["compiled"]
    assert [(r["model"], r["task"]) for r in runs] == [("mac", "long_horizon"), ("mac", "mqar"),
                                                      ("mac_no_memory", "mqar"), ("full_attention", "mqar"),
                                                      ("mac", "mqar_input")]
    assert all(r["finished"] and r["steps"] == 6 and r["time_limit_reached"] is False for r in runs)
    assert all("--time-limit" in r["command"] and "--compile" not in r["command"] for r in runs)
    long = runs[0]
    assert "--carry-state" in long["command"] and "--episode-windows" in long["command"]
    assert long["long_stream"]["stream_len"] == 16 * 32 and max(map(int, long["long_stream"]["accuracy"])) == 509
    for r in runs[1:]:
        assert set(r["final"]) == set(r["beyond_segment"]) == {"1", "2", "4"}
    assert "--memory-input input" in runs[-1]["command"] and "--memory-input" not in runs[1]["command"]
    assert "--no-mqar-show-answers" in runs[-1]["command"] and "--min-facts 4" in runs[-1]["command"]


def test_gpu_profile_smoke_times_each_model(tmp_path):
    out = tmp_path / "profile.json"
    run("benchmarks/gpu_profile.py", "--smoke", "--out", str(out))
    profile = json.loads(out.read_text())
    assert profile["smoke"] and profile["seq_len"] == 64 and profile["model_config"]["dim"] == 16
    assert {"mac", "mac_no_memory"} <= set(profile["models"])
    assert all(m["eager_s"] > 0 for m in profile["models"].values())
    assert profile["models"]["mac"]["eager_s"] > profile["models"]["mac_no_memory"]["eager_s"]


def test_gpu_record_keeps_the_speed_of_each_round_and_the_error_of_one_that_failed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_record import measured, merge_speed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    eager = {"model_config": {"dim": 64}, "titans_pytorch": True,
             "rows": [{"n": 1024, "batch": 8, "step_s": {"mac": 0.2, "titans": 0.3}}]}
    compiled = {"model_config": {"dim": 64}, "titans_pytorch": False,
                "rows": [{"n": 1024, "batch": 8, "step_s": {"mac_compiled": 0.05}}]}
    merged = merge_speed(eager, compiled)
    assert merged["rows"][0]["step_s"] == {"mac": 0.2, "titans": 0.3, "mac_compiled": 0.05}
    assert merged["compiled"] and merged["titans_pytorch"] and "errors" not in merged
    assert eager["rows"][0]["step_s"] == {"mac": 0.2, "titans": 0.3}                  # not changed in place

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image")

    failed = measured(broken, "cuda")
    assert failed == {"error": "RuntimeError('no kernel image')", "rows": []}
    merged = merge_speed(eager, failed)
    assert merged["rows"] == eager["rows"] and merged["errors"] == {"compiled": failed["error"]}
    assert merge_speed(failed, compiled)["rows"] == compiled["rows"]


@pytest.fixture(scope="module")
def tiny_mac_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mac") / "run"
    run("-m", "mac_minimal.train", "--model", "mac", "--task", "recall", "--num-facts", "1", "--seq-len", "24",
        "--segment-len", "8", "--chunk-size", "8", "--dim", "16", "--batch-size", "4", "--steps", "2",
        "--eval-every", "2", "--eval-distances", "4,12,20", "--device", "cpu", "--no-progress", "--out", str(out))
    return out


def test_what_memory_learned_on_a_tiny_run(tiny_mac_run, tmp_path):
    out = tmp_path / "learned.json"
    run("benchmarks/what_memory_learned.py", "--run", str(tiny_mac_run), "--eval-batches", "1", "--out", str(out))
    result = json.loads(out.read_text())
    layers = result["rates"]["layers"]
    assert len(layers) == 2 and all(len(layer["theta_stream"]) == 24 for layer in layers)
    assert all(0 < layer["theta_stream"][0] < layer["max_lr"] for layer in layers)
    for shares in result["shares"]:                                   # per layer: distance -> shares
        for share in shares.values():
            assert sum(share.values()) == pytest.approx(1.0, abs=1e-5)
    assert set(result["retrieval_error"][0]) == {"12", "20"}           # facts written before the query's segment
    assert set(result["ablations"]) == {"none", "reset", "no_h", "no_m"}
    metrics = [json.loads(line) for line in (tiny_mac_run / "metrics.jsonl").read_text().splitlines()]
    final = [m for m in metrics if m["event"] == "eval"][-1]["accuracy"]
    assert result["ablations"]["none"] == pytest.approx(final)        # the same evaluation as the trainer's


def test_subnormal_counts_for_a_trained_run(tiny_mac_run, tmp_path):
    out = tmp_path / "subnormal.json"
    run("benchmarks/bench_subnormal.py", "--smoke", "--repeats", "1", "--trained", str(tiny_mac_run), "--out", str(out))
    trained = json.loads(out.read_text())["trained_model"]
    assert trained["step"] == 2
    assert [(r["call"], r["n"]) for r in trained["rows"]] == [("training step", 24), ("evaluation forward", 24),
                                                             ("evaluation forward", 96), ("evaluation forward", 384)]
    assert all(r["subnormal_results"] >= 0 and set(r["step_s"]) == {"flush off", "flush on"} for r in trained["rows"])


def test_timing_scripts_run_at_toy_sizes(tmp_path):
    """The scan, hybrid and training-step benchmarks at toy sizes: each writes its JSON, with the
    fields the book plots (nothing here is timed against a target)."""
    run("benchmarks/bench_scan.py", "--lengths", "64", "--batch", "1", "--dim", "8", "--repeats", "1",
        "--passes", "1", "--threads", "1", "--out", str(tmp_path / "scan.json"))
    scan = json.loads((tmp_path / "scan.json").read_text())["rows"][0]
    assert scan["L"] == 64 and {"loop", "associative", "chunked"} <= set(scan["methods"])
    run("benchmarks/bench_hybrid.py", "--lengths", "16", "--repeats", "1", "--threads", "1",
        "--out", str(tmp_path / "hybrid.json"))
    hybrid = json.loads((tmp_path / "hybrid.json").read_text())["rows"][0]
    assert hybrid["L"] == 16 and hybrid["sequential"]["forward_s"] > 0 and hybrid["hybrid"]["forward_s"] > 0
    run("benchmarks/bench_training_step.py", "--smoke", "--out", str(tmp_path / "step.json"))
    step = json.loads((tmp_path / "step.json").read_text())
    assert step["smoke"] and set(step["settings"]["A"]["step_s"]) == {"mac", "mac_no_memory"}
    assert step["settings"]["A"]["model_config"]["memory"]["chunk_size"] == 8    # the config tree, recorded
    run("benchmarks/bench_weight_layout.py", "--smoke", "--out", str(tmp_path / "layout.json"))
    layout = json.loads((tmp_path / "layout.json").read_text())
    assert layout["gradient_layout_by_form"] == {"(W x^T)^T": dict.fromkeys(("W1", "W2", "S1", "S2"), True),
                                                 "x @ W^T": dict.fromkeys(("W1", "W2", "S1", "S2"), False)}
    for losses in layout["first_loss"].values():                     # the two forms: the same step
        assert losses["mac (W x^T)^T"] == pytest.approx(losses["mac x @ W^T"], rel=1e-6)
    run("benchmarks/profile_training_step.py", "--smoke", "--out", str(tmp_path / "profile.json"))
    compiled = json.loads((tmp_path / "profile.json").read_text())["settings"]["A"]["compiled"]
    assert sum(compiled["self_share_by_kind"].values()) == pytest.approx(1.0)
    assert compiled["matrix_product_calls_per_step"] > 0 and compiled["step_s"] > 0
    run("benchmarks/bench_subnormal.py", "--smoke", "--out", str(tmp_path / "subnormal.json"))
    rows = json.loads((tmp_path / "subnormal.json").read_text())["rows"]
    assert [r["max_lr"] for r in rows] == [0.03, 0.1] and all(set(r["step_s"]) == {"flush off", "flush on"}
                                                              for r in rows)
    run("benchmarks/bench_rotary_table.py", "--smoke", "--out", str(tmp_path / "rotary.json"))
    rotary = json.loads((tmp_path / "rotary.json").read_text())
    for losses in rotary["first_loss"].values():                     # table or angles in each call: the same step
        assert losses["table"] == pytest.approx(losses["angles in each call"], rel=1e-6)


@pytest.mark.compile
def test_cpp_wrapper_benchmark_runs_at_toy_sizes(tmp_path):
    """bench_cpp_wrapper.py at toy sizes, setting A, one round: each configuration compiled in a
    process of its own (inductor, so about a minute and a half), the same first step in both."""
    out = tmp_path / "cpp_wrapper.json"
    run("benchmarks/bench_cpp_wrapper.py", "--smoke", "--settings", "A", "--rounds", "1", "--repeats", "1",
        "--out", str(out))
    row = json.loads(out.read_text())["settings"]["A"]
    assert set(row["runs"]) == {"python driver", "cpp_wrapper"} and all(len(r) == 1 for r in row["runs"].values())
    losses = [runs[0]["first_loss"] for runs in row["runs"].values()]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert row["step_ratio_cpp_over_python"] > 0


@pytest.mark.compile
def test_compiled_benchmark_runs_at_toy_sizes(tmp_path):
    """bench_compiled.py at toy sizes, setting A, with the aot_eager backend (dynamo and autograd's graphs
    without generated C++, so seconds instead of minutes): every job timed, counted and measured."""
    out = tmp_path / "compiled.json"
    run("benchmarks/bench_compiled.py", "--smoke", "--backend", "aot_eager", "--settings", "A", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["smoke"] and result["backend"] == "aot_eager" and set(result["settings"]) == {"A"}
    row = result["settings"]["A"]
    for field in ("step_s", "first_step_s", "step_memory_bytes", "first_loss"):
        assert set(row[field]) == {"mac", "mac_recompute", "mac_no_memory"}
        assert all(set(modes) == {"eager", "compiled"} for modes in row[field].values())
    assert row["flops"]["mac_recompute"] > row["flops"]["mac"] > row["flops"]["mac_no_memory"] > 0
    assert row["parameters"]["mac_recompute"] == row["parameters"]["mac"]
    assert row["first_loss"]["mac_recompute"]["eager"] == pytest.approx(row["first_loss"]["mac"]["eager"], rel=1e-6)
    for modes in row["first_loss"].values():                       # the same weights and tokens: the same loss
        assert modes["compiled"] == pytest.approx(modes["eager"], rel=1e-5)


def test_memory_horizon_forces_the_filler_step_and_builds_its_curricula():
    """memory_horizon's evaluation-time intervention scales theta_t on filler tokens only (scale 1 and a
    stream without filler change nothing; scale 0 on filler does), and undoes itself; a continued variant
    resumes its base's command with the changed flags; the distances reach the whole stream."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import memory_horizon as horizon
        from common import variant_flags
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import torch
    from mac_minimal.data import RecallTask
    from mac_minimal.model import MACConfig, MACTransformer

    task = RecallTask()
    torch.manual_seed(0)
    model = MACTransformer(MACConfig(vocab_size=task.vocab_size, dim=16, heads=2, segment_len=4)).eval()
    with_filler = torch.randint(task.filler_start, task.vocab_size, (2, 12))
    no_filler = torch.randint(3, task.filler_start, (2, 12))
    with torch.no_grad():
        plain = {name: model(tokens)[0] for name, tokens in (("filler", with_filler), ("none", no_filler))}
        with horizon.filler_theta_scaled(model, task.filler_start, 1.0):
            assert torch.equal(model(with_filler)[0], plain["filler"])
        with horizon.filler_theta_scaled(model, task.filler_start, 0.0):
            assert torch.equal(model(no_filler)[0], plain["none"])
            assert not torch.allclose(model(with_filler)[0], plain["filler"])
        assert torch.equal(model(with_filler)[0], plain["filler"])          # undone on exit
        with horizon.shifted_alpha(model, -3.0):
            assert model.blocks[0].attn.memory.to_rates.bias[2] == -7.0
        assert model.blocks[0].attn.memory.to_rates.bias[2] == -4.0
    flags = variant_flags("alpha-10-then256", horizon.VARIANTS, horizon.CONTINUED)
    assert flags.count("--resume") == 1 and flags[flags.index("--seq-len") + 1] == "256"
    assert flags[flags.index("--memory-alpha-logit-init") + 1] == "-10"
    assert horizon.long_distances(1024, 64, 8) == [4, 8, 16, 32, 60, 128, 256, 512, 768, 1021]


def test_titans_variants_text_and_cost_at_toy_sizes(tmp_path):
    """titans_variants.py: a 2-step text run per model goes under --out (never runs/variants), its
    metrics copied and summarised with its command; run again, a finished run is kept; the cost of
    every model of the recall comparison is timed and counted."""
    out = tmp_path / "variants"
    first = run("benchmarks/titans_variants.py", "text", "--only", "mag", "swa", "--steps", "2", "--jobs", "1",
                "--out", str(out))
    assert first.stdout.count("python -m mac_minimal.train") == 2
    runs = json.loads((out / "text_summary.json").read_text())["runs"]
    assert [(r["model"], r["seed"], r["steps"]) for r in runs] == [("mag", 0, 2), ("swa", 0, 2)]
    for r in runs:
        assert f"--model {r['model']}" in r["command"] and "--task lm" in r["command"]
        assert str(out / "runs") in r["command"] and 0 < r["final_bpb"] < 9 and r["wall_s"] > 0
        assert (out / f"text-{r['model']}-s0.jsonl").exists()
    again = run("benchmarks/titans_variants.py", "text", "--only", "swa", "--steps", "2", "--out", str(out))
    assert "python -m mac_minimal.train" not in again.stdout                     # kept, not run again
    assert len(json.loads((out / "text_summary.json").read_text())["runs"]) == 2
    run("benchmarks/titans_variants.py", "cost", "--smoke", "--repeats", "1", "--out", str(tmp_path / "cost.json"))
    models = json.loads((tmp_path / "cost.json").read_text())["models"]
    assert list(models) == ["mac", "mag", "mal", "swa", "full_attention", "mac_no_memory"]
    assert all(m["step_s"] > 0 and m["flops"] > 0 and m["seq_len"] == 16 for m in models.values())
    assert models["mac"]["flops"] > models["mac_no_memory"]["flops"]
    assert models["mac"]["dim"] == 32 and models["mag"]["variant"] == "mag"


def test_memory_alone_holds_orthogonal_pairs_and_momentum_blends_them():
    """mqar_memory_alone's keys have the asked cosine; without momentum the memory holds four pairs with
    orthogonal keys (every key reads back its own value), and a momentum of 0.95 with alike keys blends
    them: the best reader then picks another pair's value for many keys."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import mqar_memory_alone as alone
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import torch
    from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryConfig

    keys, _ = alone.keys_and_values(4, 0.25, torch.Generator().manual_seed(0))
    cosines = torch.einsum("bnd,bmd->bnm", keys, keys)
    assert torch.allclose(cosines, torch.full_like(cosines, 0.25) + 0.75 * torch.eye(4), atol=1e-5)
    torch.manual_seed(0)
    memory = NeuralMemory(NeuralMemoryConfig(dim=alone.DIM, chunk_size=8))
    assert alone.cell(memory, 4, 0.0, 0.0, 0.03)["accuracy"] >= 0.98
    assert alone.cell(memory, 4, 0.5, 0.95, 0.03)["accuracy"] < 0.7


def test_mqar_probe_no_key_chances_are_a_bag_and_elimination():
    """A value of the pairs at random: 1 / N; one not yet asked: 1 / (N - j) at question j, H_N / N on
    average over a stream whose values differ; a value held twice counts twice."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import mqar_probe as probe
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import torch
    for pairs, mean in ((1, 1.0), (2, 0.75), (4, 25 / 48), (8, 761 / 2240)):   # H_N / N
        values, asked = torch.arange(pairs) + 40, torch.zeros(pairs, dtype=torch.bool)
        chances = []
        for j in torch.randperm(pairs, generator=torch.Generator().manual_seed(pairs)).tolist():  # asked order
            chances.append(probe.no_key_chances(values, asked, int(values[j])))
            asked[j] = True
        assert all(bag == 1 / pairs for bag, _ in chances)
        assert abs(sum(left for _, left in chances) / pairs - mean) < 1e-6
    values, none = torch.tensor([5, 6, 7, 8]), torch.zeros(4, dtype=torch.bool)
    assert probe.no_key_chances(values, none, 6) == (0.25, 0.25)
    assert probe.no_key_chances(values, torch.tensor([True, False, True, False]), 6) == (0.25, 0.5)
    assert probe.no_key_chances(torch.tensor([5, 5, 7, 8]), none, 5) == (0.5, 0.5)    # a value held twice


def test_mqar_probe_interventions_change_only_what_they_name_and_undo_themselves():
    """mqar_probe: without_momentum zeroes eta_t and scales theta_t in every layer; read_with_initial
    with every part reads M_0 whatever was written, with no part reads the written memory; both undone."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import mqar_probe as probe
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import torch
    from mac_minimal.model import MACConfig, MACTransformer

    torch.manual_seed(0)
    model = MACTransformer(MACConfig(vocab_size=20, dim=16, heads=2, segment_len=4)).eval()
    memory, y = model.blocks[0].attn.memory, torch.randn(2, 4, 16)
    theta, _, alpha = memory.rates(y)
    with probe.without_momentum(model, 20.0):
        for block in model.blocks:
            eta = block.attn.memory.rates(y)[1]
            assert torch.equal(eta, torch.zeros_like(eta))
        scaled, _, same = memory.rates(y)
        assert torch.allclose(scaled, 20 * theta) and torch.equal(same, alpha)
    assert torch.equal(memory.rates(y)[0], theta)
    with torch.no_grad():
        written = memory.write(y, memory.init_state(2))
        fresh, kept = memory.read(y, memory.init_state(2)), memory.read(y, written)
        assert not torch.allclose(fresh, kept)
        with probe.read_with_initial(model, (0, 1, 2, 3)):
            assert torch.allclose(memory.read(y, written), fresh)
        with probe.read_with_initial(model, ()):
            assert torch.equal(memory.read(y, written), kept)
        assert torch.equal(memory.read(y, written), kept)


def test_mqar_memory_trained_model_is_causal_and_the_script_records_its_curve(tmp_path):
    """mqar_memory_trained's embedding -> memory -> read-out model: changing later tokens leaves the
    earlier logits unchanged (with its short convolution too); a run of a few steps writes every
    variant's curve, the last evaluation at the last step."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import mqar_memory_trained as trained
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import torch
    torch.manual_seed(0)
    for conv_size in (0, 2):
        model = trained.MemoryOnly(vocab_size=40, conv_size=conv_size, max_lr=0.1)
        tokens = torch.randint(0, 40, (2, 24))
        changed = tokens.clone()
        changed[:, 13:] = torch.randint(0, 40, (2, 11))
        before, after = model(tokens)[0], model(changed)[0]
        assert torch.allclose(before[:, :13], after[:, :13], atol=1e-6)
        assert not torch.allclose(before[:, 13:], after[:, 13:])
    out = tmp_path / "trained.json"
    run("benchmarks/mqar_memory_trained.py", "--steps", "3", "--jobs", "2", "--only", "conv0-lr0.03", "conv2-lr0.1",
        "--out", str(out))
    recorded = json.loads(out.read_text())
    assert [r["variant"] for r in recorded["runs"]] == ["conv0-lr0.03", "conv2-lr0.1"]
    assert all(r["final"]["step"] == 3 and set(r["final"]["beyond_segment"]) == {"1", "2", "4", "8"}
               for r in recorded["runs"])
    assert recorded["runs"][1]["conv_size"] == 2 and recorded["show_answers"] is False


def test_mqar_capacity_evaluates_a_run_on_more_pairs_and_longer_streams(tmp_path):
    """mqar_capacity on a two-step MQAR run: a cell for every (length, pairs) whose pairs and questions
    fit (4 N - 1 <= length), each an accuracy in [0, 1]; the run's training setting recorded."""
    runs = tmp_path / "runs"
    run("-m", "mac_minimal.train", "--model", "mac", "--task", "mqar", "--num-facts", "4", "--min-facts", "2",
        "--no-mqar-show-answers", "--seq-len", "16", "--segment-len", "8", "--chunk-size", "8", "--dim", "16",
        "--batch-size", "4", "--steps", "2", "--eval-every", "2", "--eval-batches", "1", "--device", "cpu",
        "--no-progress", "--memory-input", "input", "--memory-conv-size", "2", "--out", str(runs / "tiny"))
    out = tmp_path / "capacity.json"
    run("benchmarks/mqar_capacity.py", "--runs-dir", str(runs), "--runs", "tiny", "--lengths", "16", "64",
        "--out", str(out))
    model = json.loads(out.read_text())["models"]["tiny"]
    assert model["trained_on"] == {"seq_len": 16, "pairs": [2, 4], "show_answers": False}
    assert [(c["seq_len"], c["pairs"]) for c in model["cells"]] == [(16, 1), (16, 2), (16, 4), (64, 1), (64, 2),
                                                                   (64, 4), (64, 8), (64, 12), (64, 16)]
    assert all(0 <= c["beyond_segment"] <= 1 for c in model["cells"])
