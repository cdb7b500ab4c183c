#!/usr/bin/env bash
# README command 2: set up the environment and run every check CI runs:
#   1. unit tests (tests/), including the check that every notebook is stored fully executed
#      and the planted-page test of the rendered-book check;
#   2. strict nbval over every notebook in book/ (re-executes each one and compares outputs);
#   3. the book build with warnings as errors;
#   4. the rendered-book check: every built page opened in headless Chromium, offline
#      (scripts/check_rendered_book.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Steps 1 and 4 need headless Chromium (found as the checker finds it). CI installs it when it is
# missing and apt-get is there; elsewhere the check fails and says how to install it.
have_browser() {
  .venv/bin/python scripts/check_rendered_book.py --find-chromium >/dev/null 2>&1
}
if [ "${CI:-}" = "true" ] && ! have_browser && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "Installing chromium for the rendered-book check (apt-get install chromium)"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium \
    || echo "Could not install chromium; the rendered-book check will fail." >&2
fi
start=$(date +%s)
.venv/bin/python -m pytest tests book \
  --nbval --nbval-current-env --nbval-sanitize-with book/nbval_sanitize.cfg \
  -n 2 --dist loadfile \
  --durations=10 -q
rm -rf _build
.venv/bin/jupyter-book build . -W -n --keep-going
.venv/bin/python scripts/check_rendered_book.py _build/html
echo "All checks passed in $(( $(date +%s) - start )) s (after set-up)."
