#!/bin/sh
# Pin this worker to one GPU that no other worker on the host holds, then run the command.
#
# `docker compose up --scale worker=N` cannot give each replica its own GPU: Docker hands the
# first GPU to every container that asks for `count: 1`. So each worker container is given all
# of the host's GPUs and claims one here: an exclusive flock on $AGILE_HOME/gpu-locks/gpu<i>.lock,
# kept by the worker for its whole life (the descriptor survives exec) and dropped by the kernel
# when it exits, however it exits. The workers of one host share the AGILE_HOME volume, so they
# share the locks. Under Kubernetes the device plugin shows a pod its one GPU: it claims index 0.
# With no NVIDIA device (the CPU image, or no GPU passed in) the command runs unchanged.
set -eu

dev_dir="${GPU_CLAIM_DEV_DIR:-/dev}"  # tests point this at a fake /dev
lock_dir="${AGILE_HOME:-/var/lib/agile}/gpu-locks"

say() {
  if [ "${AGILE_LOG_FORMAT:-}" = json ]; then
    printf '{"level": "%s", "logger": "agile.gpu-claim", "message": "%s"}\n' "$1" "$2" >&2
  else
    printf 'agile gpu-claim %s: %s\n' "$1" "$2" >&2
  fi
}

if [ "$#" -eq 0 ]; then
  say error "usage: gpu-claim.sh COMMAND [ARG...]"
  exit 64
fi

if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  exec "$@"  # the operator already chose the GPU
fi

count=$(find "$dev_dir" -maxdepth 1 -name 'nvidia[0-9]*' | wc -l)
if [ "$count" -eq 0 ]; then
  exec "$@"
fi

mkdir -p "$lock_dir"
i=0
while [ "$i" -lt "$count" ]; do
  exec 9>"$lock_dir/gpu$i.lock"
  if flock --nonblock 9; then
    CUDA_VISIBLE_DEVICES=$i
    export CUDA_VISIBLE_DEVICES
    say info "claimed GPU $i of $count"
    exec "$@"
  fi
  exec 9>&-
  i=$((i + 1))
done
say error "all $count GPUs of this host are held by other workers: run at most $count workers here"
exit 75
