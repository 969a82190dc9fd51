#!/usr/bin/env bash
# The face pipeline against facenet-pytorch's MTCNN on the same 640x480 frame
# (Tom_Cruise_avp_2014_4.jpg letterboxed, recipe in tools/mtcnn_bench_frame.json),
# 1 thread, in one job on one machine, printed as a ratio.
#
#   tools/bench_pipeline.sh [MIN_FACE]     # default 20 (facenet-pytorch's default)
# Needs tools/.venv-mtcnn (see tools/mtcnn_convert.py for how it is made).
set -euo pipefail
cd "$(dirname "$0")/.."
MIN=${1:-20}
cargo build --release -q -p training
OURS=$(./target/release/training bench-pipeline --threads 1 --min-face "$MIN" 2>/dev/null | tee /dev/stderr)
REF=$(tools/.venv-mtcnn/bin/python tools/mtcnn_bench.py --min-face-size "$MIN" 2>/dev/null | tee /dev/stderr)
python3 - "$OURS" "$REF" <<'PY'
import re, sys
ours, ref = sys.argv[1], sys.argv[2]
det = float(re.search(r"detect median_ms: ([\d.]+)", ours).group(1))
full = float(re.search(r"pipeline 640x480 median_ms: ([\d.]+)", ours).group(1))
fp = float(re.search(r"median_ms: ([\d.]+)", ref).group(1))
print(f"detection: ours {det:.1f} ms vs facenet-pytorch {fp:.1f} ms -> {fp/det:.2f}x faster")
print(f"whole pipeline (detect + align + ARCH-1): {full:.1f} ms -> {fp/full:.2f}x facenet-pytorch's detection alone")
PY
