#!/usr/bin/env bash
# What ran on the lent nvidia-h200-x2 machine for this report (issues 9 and 13), from the checkout's root,
# after the kit is installed and CIFAR-10's JPEG copy unpacked to /tmp/cifar (../shared/device/README.md):
#
#   bash reports/h200x2-default/device.sh two-nodes [seconds]  # a Ray cluster of two nodes started with
#        `ray start`, one GPU each, and `runner sweep --address auto`; then B1's crosscheck, alone
#   bash reports/h200x2-default/device.sh one-gpu [seconds]    # the same sweep on GPU 0 only (local cluster)
#   bash reports/h200x2-default/device.sh faults               # issue 12: workers killed mid-training and
#        mid-benchmark in a real GPU sweep (its run: reports/h200x2-faults/)
#
# Both bound the sweep with `--stop-after` (no task submitted after it; those in flight land; the next call
# resumes), with `timeout -s INT` two minutes later as a safety net, and pack what the report needs into $OUT.
# (The run published here, at ecf049b, was cut by the timeout alone: --stop-after came after it.)
set -uo pipefail
mode=${1:?two-nodes, one-gpu or faults}
budget=${2:-420}  # seconds of sweep; a training in flight may add ~90 s, so leave that much of the call
export RAY_DEDUP_LOGS=0
crosscheck_b1() {  # once the sweep has finished (its re-check ran): B1 again with an independent timer,
  # nothing else on the host (issue 9's 15% check)
  if [ -f "$out/default/report.md" ] && grep -q "^\[.*recheck:" "$out-sweep.log"; then
    python3 -m runner crosscheck --only mobilenet_v3_small_cifar --device cuda:0 \
      --out "$out/default/crosscheck.json" 2>&1 | tail -15
  fi
}
case "$mode" in
two-nodes)
  out=/tmp/runs-2node
  ray stop --force >/dev/null 2>&1
  # Two raylets on one host, each owning one GPU: the same path as two machines (the job's code travels
  # as a working_dir package, data and checkpoints through the object store), minus the network.
  CUDA_VISIBLE_DEVICES=0 ray start --head --port=6379 --num-gpus=1 --num-cpus=16 \
    --dashboard-host=127.0.0.1 --disable-usage-stats >/tmp/ray-head.log 2>&1 || { cat /tmp/ray-head.log; exit 1; }
  CUDA_VISIBLE_DEVICES=1 ray start --address=127.0.0.1:6379 --num-gpus=1 --num-cpus=16 \
    --disable-usage-stats >/tmp/ray-worker.log 2>&1 || { cat /tmp/ray-worker.log; exit 1; }
  ray status 2>&1 | sed -n '/Resources/,$p' | head -12
  timeout -s INT $((budget + 120)) python3 -m runner sweep --config variants/default.yaml --data /tmp/cifar \
    --out "$out" --address auto --stop-after "$budget" 2>&1 | tee -a "$out-sweep.log"
  ray stop --force >/dev/null 2>&1
  crosscheck_b1
  ;;
one-gpu)
  out=/tmp/runs-1gpu
  CUDA_VISIBLE_DEVICES=0 timeout -s INT $((budget + 120)) python3 -m runner sweep \
    --config variants/default.yaml --data /tmp/cifar --out "$out" --stop-after "$budget" 2>&1 | tee -a "$out-sweep.log"
  CUDA_VISIBLE_DEVICES=0 crosscheck_b1
  ;;
faults)
  # Issue 12's GPU fault run: the small quick.yaml on the GPU(s), with one worker SIGKILLed in the middle of
  # a training (after its first epoch line) and one in the middle of a benchmark group; Ray retries each
  # once (max_retries=1), and the sweep must still end with exactly one row set per variant.
  out=/tmp/runs-faults
  rm -rf "$out" "$out-sweep.log"
  python3 -m runner sweep --config variants/quick.yaml --data /tmp/cifar --out "$out" >"$out-sweep.log" 2>&1 &
  driver=$!
  kill_when() {  # $1: a line the log must show first, $2: the worker's process title (ray::<task name>)
    for _ in $(seq 1 1500); do
      if grep -q -- "$1" "$out-sweep.log"; then
        pid=$(pgrep -f -- "$2" | head -1)
        if [ -n "$pid" ]; then kill -9 "$pid"; echo "FAULT: SIGKILL $2 (pid $pid) after '$1'"; return 0; fi
      fi
      sleep 0.2
    done
    echo "FAULT: never saw '$1' with a live $2"
  }
  kill_when "\[train mobilenet\] epoch 1/" "ray::train:mobilenet"
  kill_when "bench phase" "ray::bench:mobilenet"
  wait "$driver"; echo "sweep exit $?"
  python3 - "$out/quick" <<'PY'
import sys, pandas as pd
from variants import load_sweep
run = sys.argv[1]
spec = load_sweep("variants/quick.yaml")
df = pd.read_parquet(f"{run}/results.parquet")
planned = {v.variant_id for v in spec.variants}
print("variants planned", len(planned), "with rows", df["variant_id"].nunique(),
      "missing", sorted(planned - set(df["variant_id"])), "duplicated (variant, repeat)",
      int(df.duplicated(["variant_id", "repeat"]).sum()))
print(df.groupby("variant_id")["status"].first().value_counts().to_dict())
PY
  ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
mkdir -p "${OUT:-/tmp/out}"
cp "$out-sweep.log" "${OUT:-/tmp/out}/$mode-sweep.log"
# the run folder without the checkpoints
sweep=$([ "$mode" = faults ] && echo quick || echo default)
tar cJf "${OUT:-/tmp/out}/$mode-run.tar.xz" -C "$out" --exclude=checkpoints --exclude=previous "$sweep" 2>/dev/null
# every checkpoint under 15 MB, one file each (a file that comes back must stay under 16 MiB), for `export`
# on the CPU side, where onnxruntime is; ResNet-18's (~45 MB) stays behind
mkdir -p "${OUT:-/tmp/out}/$mode-ckpt"
find "$out/$sweep/checkpoints" -name '*.pt' -size -15M -exec cp {} "${OUT:-/tmp/out}/$mode-ckpt/" \;
ls -la "${OUT:-/tmp/out}"
