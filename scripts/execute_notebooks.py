"""Re-execute notebooks in place, top to bottom in a fresh kernel, so that nbval can check them.

Usage (from the repo root, in the pinned environment):

    .venv/bin/python scripts/execute_notebooks.py              # every notebook in book/
    .venv/bin/python scripts/execute_notebooks.py book/03_*.ipynb
"""

import pathlib
import sys

import nbformat
from nbclient import NotebookClient


def execute(path: pathlib.Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    nbformat.write(nb, path)
    print(f"executed {path}")


if __name__ == "__main__":
    paths = [pathlib.Path(p) for p in sys.argv[1:]] or sorted(pathlib.Path("book").glob("*.ipynb"))
    for p in paths:
        execute(p)
