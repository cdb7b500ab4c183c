#!/usr/bin/env bash
# README command 2: set up the environment and run every check CI runs:
#   1. unit tests (tests/), including the check that every notebook is stored fully executed;
#   2. strict nbval over every notebook in book/ (re-executes each one and compares outputs);
#   3. the book build with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
start=$(date +%s)
.venv/bin/python -m pytest tests book \
  --nbval --nbval-current-env --nbval-sanitize-with book/nbval_sanitize.cfg \
  -n 2 --dist loadfile \
  --durations=10 -q
rm -rf _build
.venv/bin/jupyter-book build . -W -n --keep-going
echo "All checks passed in $(( $(date +%s) - start )) s (after set-up)."
