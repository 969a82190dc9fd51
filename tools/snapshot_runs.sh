#!/usr/bin/env bash
# Commits the runs' progress together with the report made from it:
# pauses every running `training train` (SIGSTOP) so that files do not change
# while they are staged, stages runs/, regenerates report/ from exactly what
# is staged, commits both, and lets training continue (SIGCONT), even if a
# step fails. (A run paused between writing an epoch's metrics line and its
# state.json is committed with that line; --resume handles it.)
#
# Weights travel with the runs, because a session's checkout is a fresh clone:
# every run's `best.safetensors` (teachers and starting points of later runs)
# and the latest checkpoint of each unfinished run (so that `--resume`, or
# tools/experiments.sh, continues it in the next checkout) are committed,
# although .gitignore keeps run weights out of plain `git add`. A finished
# run's checkpoint leaves the index; `last.safetensors` and `epochs/` stay local.
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
for state in $(git ls-files --cached --others --exclude-standard 'runs/*state.json'); do
    dir=$(dirname "$state")
    [[ -f $dir/best.safetensors ]] && git add -f "$dir/best.safetensors"
    done=$(jq .epochs_done "$state") stopped=$(jq .stopped_early "$state")
    epochs=$(jq .epochs "$dir/config.json")
    if [[ $stopped == true ]] || (( done >= epochs )); then
        git rm -rq --cached --ignore-unmatch "$dir/ckpt"
    elif [[ -d $dir/ckpt ]]; then
        git add -A -f "$dir/ckpt"
    fi
done
"$bin" report --runs runs --out report > /dev/null
git add -A report
git commit -q -m "$msg"
git log --oneline -1
