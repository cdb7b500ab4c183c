"""nbval compares nothing for a cell stored unexecuted: fail if any notebook is stored that way."""

import json
import pathlib

import pytest

BOOK = pathlib.Path(__file__).resolve().parents[1] / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3, f"expected the chapter notebooks in {BOOK}, found {NOTEBOOKS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_fully_executed(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    counts = [c["execution_count"] for c in code]
    assert None not in counts, f"{path.name}: {counts.count(None)} code cell(s) stored unexecuted"
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(code)}; "
        "re-run it with scripts/execute_notebooks.py")
    errors = [o.get("ename") for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{path.name}: stored error outputs {errors}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_title_and_hidden_setup(path):
    nb = json.loads(path.read_text())
    first_md = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "".join(first_md["source"]).startswith("# "), f"{path.name}: must start with a '# ' title"
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "setup_notebook" in "".join(first_code["source"]), f"{path.name}: first code cell must call setup_notebook"
    assert "remove-cell" in first_code["metadata"].get("tags", []), f"{path.name}: setup cell must be tagged remove-cell"
