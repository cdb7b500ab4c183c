#!/usr/bin/env bash
# README command 1: set up the environment and build the book into _build/html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/jupyter-book build . -W -n --keep-going
echo "The book is in _build/html/index.html"
