#!/usr/bin/env bash
# The GPU checks of the speed issue, on a machine with a CUDA GPU, in phases that a short lease can
# split over several calls: the CUDA tests, training.py on the full IMDB training set, a profile of
# the Predictor's host side, and inference.py on the full test set at 256 and 512 tokens.
#
# Usage: benchmarks/gpu.sh IMDB_FOLDER ENCODER_FOLDER VARIANT MODEL_FOLDER [COPY_RESULTS_TO]
#   IMDB_FOLDER     holds train.csv.gz and test.csv.gz (columns text, label)
#   ENCODER_FOLDER  the base encoder (an fp16 copy of the packaged MiniLM travels in half the space)
#   VARIANT         names the results files: training-imdb-VARIANT-256.json, inference-imdb-25000-VARIANT-256.json
#   MODEL_FOLDER    where the train256 phase keeps hrlm's model, which the later phases score with
#                   (inside the project, so that a later call on the same machine still finds it)
# PHASES (default "tests train256 profile infer256 infer512 train512"): which phases run, in that order.
# LIMITS (default "90 450 60 150 90 450"): each phase's time limit in seconds, in the order above; 0
# skips it. DEADLINE (seconds from the start, default none) caps every phase to what is left.
# BACKENDS: the Predictor configurations infer256 measures beside the pipelines (default: the
# defaults, fp32 and bf16, packed and padded); INFER256_ARGS, more of inference.py's options for it
# ("--no-memory": on the H200 the memory probes, a fresh CUDA process per system, took over a minute
# and cut the phase before its results file was written). TEST_ROWS (default 25000): test reviews the training phases score (accuracy); inference always
# scores all of test.csv.gz. Run from the project root, with hrlm importable (installed, or
# PYTHONPATH=src). Each results file is copied to COPY_RESULTS_TO as soon as it is written.
set -u
data=$1 base=$2 variant=$3 model=$4 copy=${5:-}
python=${PYTHON:-python3}
threads=${THREADS:-$(nproc)}
read -r -a names <<<"tests train256 profile infer256 infer512 train512"
read -r -a limits <<<"${LIMITS:-90 450 60 150 90 450}"
phases=" ${PHASES:-${names[*]}} "
export PYTHONUNBUFFERED=1 HRLM_REQUIRE_CUDA=1

step() {
    local name=$1 limit=0 i
    shift
    for i in "${!names[@]}"; do [ "${names[$i]}" = "$name" ] && limit=${limits[$i]:-0}; done
    if [[ $phases != *" $name "* ]]; then
        return
    fi
    if [ "${DEADLINE:-0}" -gt 0 ] && [ $((DEADLINE - SECONDS - 5)) -lt "$limit" ]; then
        limit=$((DEADLINE - SECONDS - 5))
    fi
    if [ "$limit" -le 0 ]; then
        echo "== $name skipped (no time left or limit 0): $*"
        return
    fi
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=5 "$limit" "$@"
    echo "== $name exit $? after $((SECONDS - start))s"
    if [ -n "$copy" ]; then
        mkdir -p "$copy"
        cp benchmarks/results/*-"$variant"-*.json "$copy"/ 2>/dev/null
    fi
}

train() {
    step "$1" "$python" benchmarks/training.py --device cuda --data "$data" --base "$base" --train 24800 \
        --validation 200 --test "${TEST_ROWS:-25000}" --max-length "$2" --threads "$threads" --variant "$variant-$2" \
        "${@:3}"
}

infer() {
    step "$1" "$python" benchmarks/inference.py --device cuda --model "$model" --data "$data/test.csv.gz" \
        --max-length "$2" --threads "$threads" --rounds 3 --variant "$variant-$2" "${@:3}"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# -W: another torch's deprecation notices are not this project's failures (pyproject makes warnings errors)
step tests "$python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
    tests/inference/test_cuda.py tests/training/test_cuda.py
train train256 256 --keep-model "$model"
if [ -f "$model/model.safetensors" ]; then
    # where the host's time goes when the GPU waits: the Predictor's defaults on 8,000 test reviews
    step profile "$python" - "$model" "$data/test.csv.gz" <<'EOF'
import cProfile, csv, gzip, pstats, sys, time
from hrlm.inference.predictor import Predictor
texts = [row["text"] for row in csv.DictReader(gzip.open(sys.argv[2], "rt"))][:8000]
p = Predictor.from_dir(sys.argv[1], truncate="head", max_length=256)
p.predict(texts[:1000])  # calibration and warm-up
t0 = time.perf_counter(); windows = p.encode(texts).windows; t1 = time.perf_counter()
p.predict(texts); t2 = time.perf_counter()
print(f"{len(texts)} docs: encode {t1 - t0:.2f}s ({len(texts) / (t1 - t0):.0f} docs/s), "
      f"predict {t2 - t1:.2f}s ({len(texts) / (t2 - t1):.0f} docs/s), budget {p.batching(windows)}")
profile = cProfile.Profile()
profile.enable(); p.predict(texts); profile.disable()
pstats.Stats(profile).sort_stats("tottime").print_stats(22)
EOF
    # shellcheck disable=SC2086  # INFER256_ARGS holds several arguments
    infer infer256 256 --backends "${BACKENDS:-auto,torch-fp32:padded,torch-bf16:padded,torch-fp32,torch-bf16}" \
        ${INFER256_ARGS:-}
    # the model trained at 256 tokens reads 512-token windows too: the speed at 512 needs no second model;
    # the baseline, the defaults and the padded paths, without the memory probes (a fresh process each)
    infer infer512 512 --backends auto,torch-fp32:padded,torch-bf16:padded --no-memory
else
    echo "== no model at $model: the inference phases need the train256 phase first"
fi
train train512 512
