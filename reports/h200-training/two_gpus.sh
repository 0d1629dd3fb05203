#!/usr/bin/env bash
# Run one round of training experiments on a two-GPU machine (the lent nvidia-h200-x2), one training
# process at a time per GPU. ROUND.gpu0 / ROUND.gpu1 list the jobs of each GPU, one per line:
#     <output name> <python -m runner train-bench arguments, without --data / --out>
# Usage (repo root, CIFAR-10 unpacked in $DATA):
#     DATA=/tmp/cifar OUT=/tmp/out bash reports/h200-training/two_gpus.sh round2
# Everything lands in $OUT/ROUND.tgz (one train_bench Parquet per job, the logs, the GPUs), also when the
# time budget (BUDGET_S, default 555 s: a device call lasts at most 600 s) stops the jobs still running.
set -u
ROUND=${1:?usage: two_gpus.sh ROUND  (with ROUND.gpu0 and ROUND.gpu1 next to this script)}
HERE=$(dirname "$0")
for f in "$HERE/$ROUND.gpu0" "$HERE/$ROUND.gpu1"; do
  [ -f "$f" ] || { echo "no job list $f" >&2; exit 2; }
done
OUT=${OUT:-/tmp/out}
DATA=${DATA:-/tmp/cifar}
BUDGET_S=${BUDGET_S:-555}
DIR="$OUT/$ROUND"
mkdir -p "$DIR"
export CIFAR_RUNNER_CACHE=${CIFAR_RUNNER_CACHE:-/tmp/cifar-cache}
python3 -c "import sys; from runner.data import load; print(load(sys.argv[1]).source)" "$DATA"  # decode once

jobs_on() {  # GPU index, job file
  export CUDA_VISIBLE_DEVICES=$1
  while read -r name args; do
    [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
    echo "### $name: $args"
    # shellcheck disable=SC2086  # the job's arguments are meant to split
    python3 -m runner train-bench --data "$DATA" $args --out "$DIR/$name.parquet"
  done < "$2"
}

nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.sm,temperature.gpu --format=csv > "$DIR/gpus.csv" 2>&1
jobs_on 0 "$HERE/$ROUND.gpu0" > "$DIR/gpu0.log" 2>&1 & p0=$!
jobs_on 1 "$HERE/$ROUND.gpu1" > "$DIR/gpu1.log" 2>&1 & p1=$!
deadline=$((SECONDS + BUDGET_S))
while kill -0 $p0 2>/dev/null || kill -0 $p1 2>/dev/null; do
  if [ $SECONDS -ge $deadline ]; then
    echo "budget of ${BUDGET_S}s spent: stopping what still runs" | tee -a "$DIR/gpu0.log" "$DIR/gpu1.log"
    pkill -P $p0; pkill -P $p1; kill $p0 $p1 2>/dev/null
    break
  fi
  sleep 5
done
wait
for f in "$DIR"/gpu*.log; do echo "== $f"; grep -v '^\[train' "$f" | grep -v '^train_s:\|^wrote\|^$' | tail -n 40; done
tar czf "$OUT/$ROUND.tgz" -C "$OUT" "$ROUND" && rm -rf "$DIR"
echo "done in ${SECONDS}s"
