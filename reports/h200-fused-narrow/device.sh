#!/usr/bin/env bash
# What ran on the lent GPU machine for reports/h200-fused-narrow/ (issue 24), from the checkout's root, one call:
#
#   bash reports/h200-fused-narrow/device.sh [seconds]
#
# `runner sweep` of variants/experiments/fused-narrow.yaml (the ResNet-18 teacher, eight distilled fastnets side
# by side, each as inductor + graph and as compile: fused + graph), bounded by --stop-after. It installs the kit
# and unpacks CIFAR-10's JPEG copy first (../shared/device/README.md) and packs the run folder (no checkpoints)
# and the log into $OUT.
set -uo pipefail
budget=${1:-400}
export RAY_DEDUP_LOGS=0 PYTHONUNBUFFERED=1
if [ ! -d /tmp/site ]; then bash .devkit/install.sh >/dev/null; fi
export PYTHONPATH=/tmp/site:${PYTHONPATH:-} PATH=/tmp/site/bin:$PATH
if [ ! -d /tmp/cifar/train ]; then mkdir -p /tmp/cifar && for f in .data/*.tar.xz; do tar xJf "$f" -C /tmp/cifar; done; fi
out=/tmp/runs-fused-narrow
mkdir -p "${OUT:=/tmp/out}"
timeout -s INT $((budget + 60)) python3 -m runner sweep --config variants/experiments/fused-narrow.yaml \
  --data /tmp/cifar --out "$out" --stop-after "$budget" 2>&1 | tee -a "$out-sweep.log" | grep -v "^\s*$" | tail -45
cp "$out-sweep.log" "$OUT/sweep.log"
tar cJf "$OUT/run.tar.xz" -C "$out" --exclude=checkpoints --exclude=previous fused-narrow 2>/dev/null
ls -la "$OUT"
