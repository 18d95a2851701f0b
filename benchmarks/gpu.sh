#!/usr/bin/env bash
# Issue 4's GPU figures in one device call: judge throughput (naive, batched, shared-prefix end to end,
# the shared-prefix forward passes alone) against the bf16 matmul ceiling, the prefix-tree layout against
# the grouped one, and the forward passes under torch.compile.
#
#   bash benchmarks/gpu.sh prepare     # here, once: fills the ignored .bench/ and .whl/
#   then, as one device call from the repo root: bash benchmarks/gpu.sh   (carry .bench and .whl)
#
# Neither ../shared nor git history travels to the device machine, and its image lacks pydantic, so
# `prepare` copies the HH dev file, the embedded SmolLM2 tokenizer and the grouped layout's prefix.py
# (git f079da6) into .bench/, and downloads pydantic's wheels for the image's Python 3.12 into .whl/.
# Each step has its own time limit, so that a slow one still leaves the others' results in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
B=.bench
OUT=${OUT:-/tmp/gpu-bench}
# Sizes and the wheel folder can be overridden for a dry run on a CPU (e.g. PAIRS=2 WHEELS=<cp311 wheels>).
PAIRS=${PAIRS:-2048} LAYOUT_PAIRS=${LAYOUT_PAIRS:-256} COMPILE_PAIRS=${COMPILE_PAIRS:-1024} WHEELS=${WHEELS:-.whl}

if [ "${1:-}" = prepare ]; then
    set -e
    mkdir -p $B .whl
    PY=${PYTHON:-.venv/bin/python}
    $PY -c "from alignment_dagster.backends.embedded import embedded_model_path as p; from transformers import AutoTokenizer as T; T.from_pretrained(p()).save_pretrained('$B/tokenizer')"
    cp ../shared/data/hh-rlhf-harmless-dev.jsonl.gz $B/
    git show f079da6:alignment_dagster/backends/prefix.py >$B/prefix_before.py
    for w in pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$w"
    done
    du -sh $B .whl
    exit 0
fi

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi -L; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
DATA="--tokenizer $B/tokenizer --data $B/hh-rlhf-harmless-dev.jsonl.gz --model qwen2-0.5b-shape --batch-size 1024"

timeout 300 python3 benchmarks/judge.py $DATA --pairs "$PAIRS" --naive-pairs 8 --json "$OUT/judge.json" 2>&1 \
    | grep -v "Loading weights" | tee "$OUT/judge.log"
timeout 90 python3 benchmarks/prefix_layout.py $DATA --pairs "$LAYOUT_PAIRS" --before $B/prefix_before.py 2>&1 \
    | grep -v "Loading weights" | tee "$OUT/layout.log"
timeout 150 python3 benchmarks/judge.py $DATA --pairs "$COMPILE_PAIRS" --forward-only --compile --json "$OUT/compile.json" 2>&1 \
    | grep -v "Loading weights" | tee "$OUT/compile.log"
exit 0
