"""The trainer's command line: its two module entries, its flags, the missing-CUDA error.

(The end-to-end runs, bad arguments and exit statuses are tested in test_train.py.)
"""

import ast
import os
import pathlib
import runpy
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

import mac_minimal
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


def package_imports() -> dict[str, set[str]]:
    """Every module of mac_minimal -> the mac_minimal modules it imports, read from its source with
    ``ast``: every import statement, also those inside functions or ``if __name__ == "__main__":``."""
    package = pathlib.Path(mac_minimal.__file__).parent
    modules = {f"mac_minimal.{path.stem}": path for path in package.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = imported & modules.keys() - {name, "mac_minimal.__init__"}
    return graph


def test_the_package_has_no_import_cycle_and_train_does_not_import_the_command_line():
    graph = package_imports()
    assert "mac_minimal.train" in graph["mac_minimal.cli"]   # the command line runs the trainer ...
    assert "mac_minimal.cli" not in graph["mac_minimal.train"]   # ... which never imports it back

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        for imported in sorted(graph[module]):
            found = cycle_from(imported, path + [module])
            if found:
                return found
        return None

    cycles = [cycle for module in sorted(graph) if (cycle := cycle_from(module, []))]
    assert cycles == [], " -> ".join(cycles[0])


def test_cuda_without_cuda_is_one_line_and_status_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--device", "cuda", "--no-progress", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err and "--device cpu" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
