#!/usr/bin/env bash
# Builds .venvs/label-studio: the Label Studio server in its own venv (about 1 GB of Django and friends
# the project must not inherit; the project talks to it over REST only). Idempotent: a stamp file
# records a finished install, so a second run is instant. Override the interpreter with PYTHON=...
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venvs/label-studio
VERSION=1.23.2
STAMP=$VENV/.installed-label-studio-$VERSION
[ -f "$STAMP" ] && exit 0
start=$(date +%s)
rm -rf "$VENV"
"${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "label-studio==$VERSION"
# Import check: a broken install fails here, not minutes later in a test fixture's readiness wait.
"$VENV/bin/python" -c "import label_studio; print('label-studio', label_studio.__version__)"
touch "$STAMP"
echo "label-studio venv ready in $(( $(date +%s) - start ))s"
