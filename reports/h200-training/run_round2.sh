#!/usr/bin/env bash
# Issue 3, round 2, on the lent nvidia-h200-x2 machine (one training process at a time per GPU):
#   GPU 0: ResNet-18 recipes of variants/experiments/resnet18_recipes.yaml (the 60-epoch batch-1024 family,
#          the deterministic one twice with seed 0), then MobileNetV3-Small alone, seeds 0 and 1;
#   GPU 1: MobileNetV3-Small distilled from one ResNet-18 teacher, seeds 0-2, then alone, seed 2.
# Usage (repo root, data unpacked):  DATA=/tmp/cifar OUT=/tmp/out bash reports/h200-training/run_round2.sh
# Everything lands in $OUT/round2.tgz (train_bench Parquet files + logs), also when the time budget cuts it.
set -u
OUT=${OUT:-/tmp/out}
DATA=${DATA:-/tmp/cifar}
BUDGET_S=${BUDGET_S:-560}
R18=variants/experiments/resnet18_recipes.yaml
KD=variants/experiments/distill.yaml
mkdir -p "$OUT/round2"
export CIFAR_RUNNER_CACHE=/tmp/cifar-cache
python3 -c "import sys; from runner.data import load; print(load(sys.argv[1]).source)" "$DATA"  # decode once

tb() { python3 -m runner.train_bench --data "$DATA" "$@"; }
gpu0() {
  export CUDA_VISIBLE_DEVICES=0
  tb --config $R18 --models e60_b1024 --out "$OUT/round2/r18_e60_b1024.parquet"
  tb --config $R18 --models e60_b1024_det --seeds 0,0 --out "$OUT/round2/r18_e60_b1024_det.parquet"
  tb --config $R18 --models e60_b1024_lr08 --out "$OUT/round2/r18_e60_b1024_lr08.parquet"
  tb --config $R18 --models e60_b1024_zi --out "$OUT/round2/r18_e60_b1024_zi.parquet"
  tb --config $KD --models mobilenet --seeds 0 --out "$OUT/round2/mobilenet_alone_s0.parquet"
  tb --config $KD --models mobilenet --seeds 1 --out "$OUT/round2/mobilenet_alone_s1.parquet"
}
gpu1() {
  export CUDA_VISIBLE_DEVICES=1
  tb --config $KD --models mobilenet_kd --seeds 0,1,2 --teacher-seed 0 --out "$OUT/round2/mobilenet_kd.parquet"
  tb --config $KD --models mobilenet --seeds 2 --out "$OUT/round2/mobilenet_alone_s2.parquet"
}

nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.sm,temperature.gpu --format=csv > "$OUT/round2/gpus.csv"
gpu0 > "$OUT/round2/gpu0.log" 2>&1 & p0=$!
gpu1 > "$OUT/round2/gpu1.log" 2>&1 & p1=$!
deadline=$((SECONDS + BUDGET_S))
while kill -0 $p0 2>/dev/null || kill -0 $p1 2>/dev/null; do
  if [ $SECONDS -ge $deadline ]; then
    echo "budget of ${BUDGET_S}s spent: stopping what still runs" | tee -a "$OUT/round2/gpu0.log" "$OUT/round2/gpu1.log"
    pkill -P $p0; pkill -P $p1; kill $p0 $p1 2>/dev/null
    break
  fi
  sleep 5
done
wait
for f in "$OUT"/round2/gpu*.log; do echo "== $f"; grep -v '^\[train' "$f" | tail -n 30; done
tar czf "$OUT/round2.tgz" -C "$OUT" round2 && rm -rf "$OUT/round2"
echo "done in ${SECONDS}s"
