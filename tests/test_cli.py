"""The trainer's command line: its two module entries, its flags, the missing-CUDA error.

(The end-to-end runs, bad arguments and exit statuses are tested in test_train.py.)
"""

import os
import runpy
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

import mac_minimal.cli as cli_module
from mac_minimal.cli import main, parse_args
from mac_minimal.train_config import TrainConfig

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def help_text(module: str) -> str:
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=ENV,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_both_module_entries_run_the_same_command_line_with_a_flag_per_field():
    text = help_text("mac_minimal")
    assert help_text("mac_minimal.train") == text
    flags = {"--no-progress" if f.name == "progress" else "--" + f.name.replace("_", "-")
             for f in fields(TrainConfig)}
    assert [flag for flag in sorted(flags) if flag not in text] == []


def test_every_flag_defaults_to_its_train_config_field():
    assert parse_args([]) == TrainConfig()


@pytest.mark.filterwarnings("ignore:'mac_minimal.train' found in sys.modules")
def test_the_train_module_entry_hands_over_before_defining_a_second_trainer(monkeypatch):
    """``python -m mac_minimal.train`` runs train.py as ``__main__``; the command line must start
    before that copy defines its own NonFiniteLossError and train (cli uses mac_minimal.train's)."""
    seen = {}

    def fake_main():
        seen.update(vars(sys.modules["__main__"]))
        return 0

    monkeypatch.setattr(cli_module, "main", fake_main)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("mac_minimal.train", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0 and seen["__name__"] == "__main__"
    assert "NonFiniteLossError" not in seen and "train" not in seen


def test_cuda_without_cuda_is_one_line_and_status_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--device", "cuda", "--no-progress", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err and "--device cpu" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
