#!/usr/bin/env bash
# The GPU checks of the speed issue in one go, on a machine with a CUDA GPU: the CUDA tests, then
# training.py and inference.py on the GPU on the full IMDB sets at 256 and 512 tokens (training at
# 512 last: the costliest step, the first to be cut by a lease that runs out).
#
# Usage: benchmarks/gpu.sh IMDB_FOLDER ENCODER_FOLDER VARIANT [COPY_RESULTS_TO]
#   IMDB_FOLDER     holds train.csv.gz and test.csv.gz (columns text, label)
#   ENCODER_FOLDER  the base encoder (an fp16 copy of the packaged MiniLM travels in half the space)
#   VARIANT         names the results files: training-imdb-VARIANT-256.json, inference-imdb-25000-VARIANT-256.json
# STEP_LIMITS (default "100 200 150 90 250"): tests, training at 256, inference at 256 and 512, training
# at 512; 0 skips a step. DEADLINE (seconds from the start, default none) caps every step to what is left.
# Run from the project root, with hrlm importable (installed, or PYTHONPATH=src). Each step has its
# own time limit (STEP_LIMITS, seconds, in the order below) so that a short lease still returns the
# steps that finished; each results file is copied to COPY_RESULTS_TO as soon as it is written.
set -u
data=$1 base=$2 variant=$3 copy=${4:-}
python=${PYTHON:-python3}
threads=${THREADS:-$(nproc)}
read -r -a limits <<<"${STEP_LIMITS:-100 200 150 90 250}"
export PYTHONUNBUFFERED=1 HRLM_REQUIRE_CUDA=1

step() {
    local limit=$1
    shift
    if [ "${DEADLINE:-0}" -gt 0 ] && [ $((DEADLINE - SECONDS - 5)) -lt "$limit" ]; then
        limit=$((DEADLINE - SECONDS - 5))
    fi
    if [ "$limit" -le 0 ]; then
        echo "== skipped (limit 0): $*"
        return
    fi
    echo "== $* (limit ${limit}s)"
    local start=$SECONDS
    timeout --kill-after=5 "$limit" "$@"
    echo "== exit $? after $((SECONDS - start))s"
    if [ -n "$copy" ]; then
        mkdir -p "$copy"
        cp benchmarks/results/*-"$variant"-*.json "$copy"/ 2>/dev/null
    fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# -W: another torch's deprecation notices are not this project's failures (pyproject makes warnings errors)
step "${limits[0]}" "$python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
    tests/inference/test_cuda.py tests/training/test_cuda.py
model=$(mktemp -d)/imdb
train() {
    step "$1" "$python" benchmarks/training.py --device cuda --data "$data" --base "$base" --train 24800 \
        --validation 200 --test 25000 --max-length "$2" --threads "$threads" --variant "$variant-$2" "${@:3}"
}
train "${limits[1]}" 256 --keep-model "$model"
if [ -f "$model/model.safetensors" ]; then
    infer() {
        step "$1" "$python" benchmarks/inference.py --device cuda --model "$model" --data "$data/test.csv.gz" \
            --max-length "$2" --threads "$threads" --rounds 3 --variant "$variant-$2" "${@:3}"
    }
    infer "${limits[2]}" 256
    # the model trained at 256 tokens reads 512-token windows too: the speed at 512 needs no second model;
    # the baseline, the defaults and the padded paths, without the memory probes (a fresh process each)
    infer "${limits[3]}" 512 --backends auto,torch-fp32:padded,torch-bf16:padded --no-memory
fi
train "${limits[4]}" 512
