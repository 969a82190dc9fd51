#!/usr/bin/env bash
# The paper's twelve experiments (issue 6): ARCH-1..4 on FER2013, FER+ and CK+
# (subject-independent 10-fold cross-validation), each run resumable.
#
#   tools/experiments.sh                 # every experiment, largest first
#   tools/experiments.sh arch1_ckplus    # only the named ones
#   tools/experiments.sh arch1_fer2013_e30   # _e<N>: N epochs (own run folder)
#   tools/experiments.sh arch1_fer2013_p200  # _p<N>: the paper's protocol, up to
#                                        # N epochs (see PAPER_BUDGET below)
#   THREADS=1 tools/experiments.sh & THREADS=1 tools/experiments.sh &
#                                        # two at once, sharing the plan
#
# Each run lives in runs/<name>[/fold<k>]. A finished run is skipped, a started
# one continues with --resume, so the script can be stopped at any point (Ctrl-C
# loses at most the running epoch) and started again, in this session or the
# next. Then: `cargo run --release -p training -- report`.
#
# Environment: DATA (default ../shared/data), TRAINING_BIN (default: build
# target/release/training), THREADS (default 2), EPOCHS (default 30),
# CK_EPOCHS (default 30) and CK_BATCH (default 16, the paper used 10 on CK+).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data}
THREADS=${THREADS:-2}
EPOCHS=${EPOCHS:-30}
CK_EPOCHS=${CK_EPOCHS:-30}
CK_BATCH=${CK_BATCH:-16}
if [[ -z "${TRAINING_BIN:-}" ]]; then
    cargo build --release -p training
    TRAINING_BIN=target/release/training
fi
export RAYON_NUM_THREADS=$THREADS

FER=$DATA/fer2013/fer2013.csv.gz
PLUS=$DATA/ferplus/fer2013new.csv.gz
CK=$DATA/ckplus48
# Largest first: the FER2013-sized runs, then CK+.
# arch1_fer2013 is the shipped 60-epoch run; arch1_fer2013_e30 gives the
# report a like-for-like ARCH-1 beside the other architectures' 30 epochs.
PLAN=(arch1_fer2013 arch2_fer2013 arch3_fer2013 arch4_fer2013
      arch1_ferplus arch2_ferplus arch3_ferplus arch4_ferplus arch1_fer2013_e30
      arch1_ckplus arch2_ckplus arch3_ckplus arch4_ckplus)
if (( $# > 0 )); then PLAN=("$@"); fi

# A name may end in _e<N> to train for N epochs instead of the default
# (arch1_fer2013_e30: ARCH-1 on FER2013 for 30 epochs, in runs/arch1_fer2013_e30),
# or in _p<N> for the paper's protocol with the project's recipe: up to N
# epochs, the learning rate divided by 10 after 10 epochs without a better
# validation accuracy, early stopping after 20, random erasing 0.25
# (arch1_fer2013_p200, arch3_ckplus_p200, ...).
base_of() { [[ $1 =~ ^(.*)_[ep]([0-9]+)$ ]] && echo "${BASH_REMATCH[1]}" || echo "$1"; }
PAPER_BUDGET=(--plateau 10 --patience 20 --random-erasing 0.25)

# Only the data the planned experiments read has to be there.
for name in "${PLAN[@]}"; do
    case $(base_of "$name") in
        *_fer2013) need=("$FER") ;;
        *_ferplus) need=("$FER" "$PLUS") ;;
        *_ckplus) need=("$CK/folds.csv") ;;
        *) echo "unknown experiment $name" >&2; exit 1 ;;
    esac
    for f in "${need[@]}"; do
        [[ -e $f ]] || { echo "missing $f for $name (set DATA)" >&2; exit 1; }
    done
done

# train DIR ARGS...: start, resume or skip the run in DIR. A run whose
# checkpoint is gone (a fresh clone keeps only its committed metrics) starts
# again from scratch. A run that fails is reported and the plan goes on.
failed=()
train() {
    local dir=$1; shift
    local status=new lock
    mkdir -p "$(dirname "$dir")"
    # One instance per run: several instances (e.g. two with THREADS=1 on a
    # 2-core machine, which trains faster in total than one with 2 threads)
    # share the plan and skip the runs another instance holds.
    exec {lock}>"$dir.lock"
    if ! flock -n "$lock"; then
        echo "== $dir: another instance is training it"
        exec {lock}>&-
        return
    fi
    if [[ -f $dir/config.json ]]; then
        status=$(python3 - "$dir" <<'EOF' || echo error
import json, os, sys
d = sys.argv[1]
cfg = json.load(open(d + "/config.json"))
try:
    state = json.load(open(d + "/state.json"))
except (OSError, ValueError):
    print("resume")  # started, no epoch finished yet
    sys.exit()
done = state["epochs_done"]
if done >= cfg["epochs"] or state.get("stopped_early"):
    print("finished")
elif os.path.exists(f"{d}/ckpt/weights-{done}.safetensors"):
    print("resume")
else:
    print("lost")
EOF
)
    fi
    case $status in
        finished) echo "== $dir: finished"; exec {lock}>&-; return ;;
        lost)
            # The partial metrics stay in git history and in runs-lost/.
            local aside
            aside=runs-lost/${dir#runs/}-$(date +%Y%m%d%H%M%S)
            echo "== $dir: its checkpoint is missing; moved to $aside, starting again"
            mkdir -p "$(dirname "$aside")"
            mv "$dir" "$aside"
            status=new ;;
        error)
            echo "!! $dir: cannot read its config.json / state.json; skipped" >&2
            failed+=("$dir")
            exec {lock}>&-
            return ;;
    esac
    local resume=()
    if [[ $status == resume ]]; then
        # A resumed run keeps its config.json: pass only the data options and
        # the epoch budget (`train --resume` refuses the others).
        resume=(--resume)
        local kept=()
        while (( $# > 0 )); do
            case $1 in
                --arch|--batch-size|--plateau|--patience|--random-erasing) shift 2 ;;
                *) kept+=("$1"); shift ;;
            esac
        done
        set -- "${kept[@]}"
    fi
    echo "== $dir: ${status/new/starting}"
    if ! "$TRAINING_BIN" train --run-dir "$dir" "${resume[@]}" --no-progress "$@"; then
        echo "!! $dir failed; going on with the plan" >&2
        failed+=("$dir")
    fi
    exec {lock}>&-
}

for name in "${PLAN[@]}"; do
    arch=${name%%_*}
    epochs=$EPOCHS ck_epochs=$CK_EPOCHS recipe=()
    if [[ $name =~ _([ep])([0-9]+)$ ]]; then
        epochs=${BASH_REMATCH[2]} ck_epochs=${BASH_REMATCH[2]}
        [[ ${BASH_REMATCH[1]} == p ]] && recipe=("${PAPER_BUDGET[@]}")
    fi
    case $(base_of "$name") in
        *_fer2013) train "runs/$name" --arch "$arch" --data "$FER" --epochs "$epochs" "${recipe[@]}" ;;
        *_ferplus) train "runs/$name" --arch "$arch" --data "$FER" --ferplus "$PLUS" --epochs "$epochs" "${recipe[@]}" ;;
        *_ckplus)
            for fold in 0 1 2 3 4 5 6 7 8 9; do
                train "runs/$name/fold$fold" --arch "$arch" --data "$CK" --fold "$fold" \
                    --epochs "$ck_epochs" --batch-size "$CK_BATCH" "${recipe[@]}"
            done ;;
        *) echo "unknown experiment $name" >&2; exit 1 ;;
    esac
done

if (( ${#failed[@]} > 0 )); then
    echo "failed runs: ${failed[*]}" >&2
    exit 1
fi
