#!/usr/bin/env bash
# What ran on the lent GPU machine for reports/engine/ (issue 21), from the checkout's root:
#
#   bash reports/engine/device.sh sweep [seconds]   # the default sweep on this machine's GPUs (local Ray
#        cluster), bounded by --stop-after; a later call resumes it; once it has finished, B1 and the chosen
#        model's architecture are timed again by `runner crosscheck` (an independent timer), alone
#
# It installs the kit and unpacks CIFAR-10's JPEG copy first (../shared/device/README.md), and packs the run
# folder (no checkpoints) and the log into $OUT.
set -uo pipefail
mode=${1:-sweep}
budget=${2:-420}
export RAY_DEDUP_LOGS=0 PYTHONUNBUFFERED=1
if [ ! -d /tmp/site ]; then bash .devkit/install.sh >/dev/null; fi
export PYTHONPATH=/tmp/site:${PYTHONPATH:-} PATH=/tmp/site/bin:$PATH
if [ ! -d /tmp/cifar/train ]; then mkdir -p /tmp/cifar && for f in .data/*.tar.xz; do tar xJf "$f" -C /tmp/cifar; done; fi
out=/tmp/runs-engine
case "$mode" in
sweep)
  timeout -s INT $((budget + 150)) python3 -m runner sweep --config variants/default.yaml --data /tmp/cifar \
    --out "$out" --stop-after "$budget" 2>&1 | tee -a "$out-sweep.log" | grep -v "^\s*$"
  if grep -q "^report:" "$out-sweep.log" && [ ! -f "$out/default/crosscheck.json" ]; then
    python3 -m runner crosscheck --device cuda:0 --out "$out/default/crosscheck.json" 2>&1 | tail -12
  fi
  ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
mkdir -p "${OUT:-/tmp/out}"
cp "$out-sweep.log" "${OUT:-/tmp/out}/sweep.log"
tar cJf "${OUT:-/tmp/out}/run.tar.xz" -C "$out" --exclude=checkpoints --exclude=previous default 2>/dev/null
ls -la "${OUT:-/tmp/out}"
