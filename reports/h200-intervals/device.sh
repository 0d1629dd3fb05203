#!/usr/bin/env bash
# What ran on the lent GPU machine for reports/h200-intervals/ (issue 23), from the checkout's root:
#
#   bash reports/h200-intervals/device.sh [seconds]   # variants/brief.yaml (recheck: all; every variant timed
#        in two processes, then re-checked in a third) on this machine's GPU, bounded by --stop-after; a later
#        call resumes it; once finished, `runner crosscheck` times B1 again with an independent timer, alone
#
# It installs the kit and unpacks CIFAR-10's JPEG copy first (../shared/device/README.md), and packs the run
# folder (no checkpoints) and the log into $OUT.
set -uo pipefail
budget=${1:-420}
export RAY_DEDUP_LOGS=0 PYTHONUNBUFFERED=1
if [ ! -d /tmp/site ]; then bash .devkit/install.sh >/dev/null; fi
export PYTHONPATH=/tmp/site:${PYTHONPATH:-} PATH=/tmp/site/bin:$PATH
if [ ! -d /tmp/cifar/train ]; then mkdir -p /tmp/cifar && for f in .data/*.tar.xz; do tar xJf "$f" -C /tmp/cifar; done; fi
out=/tmp/runs-intervals
timeout -s INT $((budget + 150)) python3 -m runner sweep --config variants/brief.yaml --data /tmp/cifar \
  --out "$out" --stop-after "$budget" 2>&1 | tee -a "$out-sweep.log" | grep -v "^\s*$"
if grep -q "^report:" "$out-sweep.log" && [ ! -f "$out/brief/crosscheck.json" ]; then
  python3 -m runner crosscheck --device cuda:0 --out "$out/brief/crosscheck.json" 2>&1 | tail -12
fi
mkdir -p "${OUT:-/tmp/out}"
cp "$out-sweep.log" "${OUT:-/tmp/out}/sweep.log"
tar cJf "${OUT:-/tmp/out}/run.tar.xz" -C "$out" --exclude=checkpoints --exclude=previous brief 2>/dev/null
ls -la "${OUT:-/tmp/out}"
