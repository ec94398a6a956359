#!/usr/bin/env bash
# The ETHOS training matrix on one GPU, every run side by side. At batch 2 x 128 tokens a
# training step is launch-bound (a few GFLOP), so one GPU carries a dozen runs at once.
#
#   protocol: the codelab's protocol, nothing chosen: all 800 training rows, 4 epochs, argmax
#             (threshold 0.5), test split scored once; both objectives x $SEEDS
#   lever:    the same with LoRA on every projection and Adam 2e-4, x $SEEDS
#   sweep:    `agile sweep`, one process per size (joined afterwards with `agile sweep --merge`)
#
#   bench/bench_gpu_train.sh                       # all three, into $RESULTS
#   JOBS=sweep bench/bench_gpu_train.sh
#   MODEL=/path/to/tiny/preset EXTRA="--max-steps 2" DEADLINE=120 bench/bench_gpu_train.sh   # dry run, CPU
#
# Each run is stopped after $DEADLINE seconds; a stopped sweep keeps the points it scored, a stopped
# `train` run leaves no adapter. Measured on one H200 with all 12 runs at once: ~3.5 steps/s per run
# (~40 for the GPU), so a 4-epoch run of 800 rows (1,600 steps) needs ~8 minutes and the 800-row
# sweep (4,000 steps) ~20: 470 s cut every train run short (bench/results/training_gpu_h200.txt).
# Inside one 10-minute window, run fewer jobs (JOBS=protocol, or SEEDS=1234).
# Logs, adapters and reports land in $RESULTS; the summary table is printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-gemma3_270m}
SEEDS=${SEEDS:-1234 1 2}
SIZES=${SIZES:-200 400 800}
JOBS=${JOBS:-protocol lever sweep}
DEADLINE=${DEADLINE:-1500}
RESULTS=${RESULTS:-/tmp/agile-gpu-train}
EXTRA=${EXTRA:-}
export KERAS_BACKEND=torch USE_TF=0 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RESULTS"

# Many small processes share the GPU better under MPS; keep it only if a CUDA call works under it.
if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d && timeout 60 "$PY" -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
        echo "MPS on"
    else
        echo quit | nvidia-cuda-mps-control 2> /dev/null
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
        echo "MPS off (it did not start, or CUDA failed under it)"
    fi
fi

# Convert the embedded model once, before the runs race for it.
"$PY" -c "import sys; from agile.models import load_model; load_model(sys.argv[1])" "$MODEL" \
    > "$RESULTS/load.log" 2>&1 || { cat "$RESULTS/load.log"; exit 1; }

run() {  # run NAME ARGS...: one background job with its own log
    local name=$1
    shift
    # shellcheck disable=SC2086  # EXTRA holds several flags
    timeout "$DEADLINE" "$PY" -m agile.cli.main "$@" --model "$MODEL" $EXTRA > "$RESULTS/$name.log" 2>&1 &
}

for job in $JOBS; do
    case "$job" in
        protocol)
            for objective in label causal-lm; do
                for seed in $SEEDS; do
                    run "$objective-$seed" train --objective "$objective" --seed "$seed" --validation-fraction 0 \
                        --out "$RESULTS/$objective-$seed" --report "$RESULTS/$objective-$seed/report"
                done
            done ;;
        lever)
            for seed in $SEEDS; do
                run "all-2e-4-$seed" train --lora-targets all --learning-rate 2e-4 --seed "$seed" \
                    --validation-fraction 0 --out "$RESULTS/all-2e-4-$seed" --report "$RESULTS/all-2e-4-$seed/report"
            done ;;
        sweep)
            for size in $SIZES; do
                run "sweep-$size" sweep --sizes "$size" --out "$RESULTS/sweep-$size"
            done ;;
        *) echo "unknown job $job (protocol, lever, sweep)" >&2; exit 2 ;;
    esac
done
while [ "$(jobs -r | wc -l)" -gt 0 ]; do  # GPU memory while they run
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader \
        >> "$RESULTS/gpu.csv"
    sleep 10
done
wait

shopt -s nullglob
sweeps=("$RESULTS"/sweep-*/sweep.csv)
csvs=$(IFS=,; echo "${sweeps[*]}")
[ -n "$csvs" ] && "$PY" -m agile.cli.main sweep --merge "$csvs" --out "$RESULTS/sweep"
"$PY" - "$RESULTS" <<'EOF' | tee "$RESULTS/summary.txt"
import csv, json, sys
from pathlib import Path
root = Path(sys.argv[1])
print(f"{'run':<16}{'epochs':>7}{'s/step':>8}{'F1':>8}{'ROC-AUC':>9}{'RSS MB':>8}{'GPU MB':>8}")
for meta in sorted(root.glob("*/adapter.json")):
    m = json.loads(meta.read_text())["metrics"]
    t = m.get("test", {})
    print(f"{meta.parent.name:<16}{m['best_epoch']:>7}{m['seconds_per_step']:>8.3f}{t.get('f1', float('nan')):>8.4f}"
          f"{t.get('roc_auc', float('nan')):>9.4f}{m['peak_rss_mb']:>8}{m.get('peak_gpu_mb', '-'):>8}")
if (root / "sweep" / "sweep.csv").exists():
    print("\nsweep (test split, threshold 0.5):")
    for row in csv.DictReader((root / "sweep" / "sweep.csv").open()):
        print(f"  size {row['size']:>4} epoch {row['epoch']:>3}: F1 {row['f1']}, ROC-AUC {row['roc_auc']}, "
              f"{row['epoch_seconds']} s/epoch")
for log in sorted(root.glob("*.log")):  # runs that left no result: the reason is the log's last line
    if log.stem != "load" and not log.stem.startswith("sweep-") and not (root / log.stem / "adapter.json").exists():
        print(f"{log.stem}: no adapter; last line: {log.read_text().strip().splitlines()[-1:]}")
EOF
