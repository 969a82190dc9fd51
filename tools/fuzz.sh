#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS each and prints
# the table for docs/RELIABILITY.md: target, executions, crashes.
#
#   tools/fuzz.sh 600                 # every target, 10 minutes each
#   TARGETS="weights replay_stream" tools/fuzz.sh 60
#
# Needs the nightly toolchain (installed on these machines) and cargo-fuzz
# (installed from crates.io when missing). Each target starts from the
# committed seeds in fuzz/seeds/<target> and keeps its growing corpus in
# fuzz/corpus/<target> (not committed). A crash stops that target, leaves the
# input in fuzz/artifacts/<target>/ and the log in fuzz/logs/<target>.log;
# minimise it with `cargo +nightly fuzz tmin <target> <file>` and commit it as
# a regression test in the crate that had the bug.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked
cd fuzz
targets=${TARGETS:-$(cargo +nightly fuzz list)}
# One build for all targets (debug assertions on, as in the tests).
cargo +nightly fuzz build
mkdir -p logs
rows=()
for t in $targets; do
    mkdir -p "corpus/$t"
    echo "== $t: $secs s" >&2
    status=0
    # -rss_limit_mb: an input that makes a parser allocate 2 GiB is a bug too.
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 > "logs/$t.log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    crashes=$(find "artifacts/$t" -type f 2> /dev/null | wc -l)
    if (( status != 0 )) && (( crashes == 0 )); then crashes="run failed ($status)"; fi
    rows+=("| \`$t\` | $secs | ${execs:-?} | $crashes |")
done
echo "| target | seconds | executions | crashes |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
