#!/usr/bin/env bash
# Commits the runs' progress together with the report made from it:
# pauses every running `training train` (SIGSTOP) so that files do not change
# while they are staged, stages runs/, regenerates report/ from exactly what
# is staged, commits both, and lets training continue (SIGCONT), even if a
# step fails. (A run paused between writing an epoch's metrics line and its
# state.json is committed with that line; --resume handles it.)
#
#   tools/snapshot_runs.sh "Runs: ARCH-2 FER2013 epoch 20"
set -euo pipefail
cd "$(dirname "$0")/.."
msg=${1:-"Runs and report: progress snapshot"}
bin=target/release/training
cargo build --release -p training
# Processes whose program is a `training` binary running `train` (not this
# script, whatever its message says).
pids=$(pgrep -f '^[^ ]*/training[^ /]* train( |$)' || true)
resume() { [[ -n $pids ]] && kill -CONT $pids 2>/dev/null || true; }
trap resume EXIT
[[ -n $pids ]] && kill -STOP $pids
git add -A runs
"$bin" report --runs runs --out report > /dev/null
git add -A report
git commit -q -m "$msg"
git log --oneline -1
