#!/usr/bin/env bash
# What ran on the lent GPU machine for reports/h200-fused/ (issue 24), from the checkout's root, in one call:
#
#   bash reports/h200-fused/device.sh [seconds]
#
# 1. `runner sweep` of variants/experiments/fused.yaml (ResNet-18 teacher, three distilled fastnets, each as
#    inductor + graph and as compile: fused + graph), bounded by --stop-after;
# 2. with what time is left, runner.diagnostics.fused_probe (random weights: the tile options side by side).
# It installs the kit and unpacks CIFAR-10's JPEG copy first (../shared/device/README.md) and packs the run
# folder (no checkpoints) and the logs into $OUT.
set -uo pipefail
budget=${1:-420}
export RAY_DEDUP_LOGS=0 PYTHONUNBUFFERED=1
if [ ! -d /tmp/site ]; then bash .devkit/install.sh >/dev/null; fi
export PYTHONPATH=/tmp/site:${PYTHONPATH:-} PATH=/tmp/site/bin:$PATH
if [ ! -d /tmp/cifar/train ]; then mkdir -p /tmp/cifar && for f in .data/*.tar.xz; do tar xJf "$f" -C /tmp/cifar; done; fi
out=/tmp/runs-fused
mkdir -p "${OUT:=/tmp/out}"
start=$(date +%s)
timeout -s INT $((budget + 60)) python3 -m runner sweep --config variants/experiments/fused.yaml --data /tmp/cifar \
  --out "$out" --stop-after "$budget" 2>&1 | tee -a "$out-sweep.log" | grep -v "^\s*$" | tail -40
left=$((budget + 90 - $(date +%s) + start))
if [ "$left" -gt 50 ]; then timeout "$left" python3 -m runner.diagnostics.fused_probe 2>&1 | tail -14 | tee "$OUT/probe.log"; fi
cp "$out-sweep.log" "$OUT/sweep.log"
tar cJf "$OUT/run.tar.xz" -C "$out" --exclude=checkpoints --exclude=previous fused 2>/dev/null
ls -la "$OUT"
