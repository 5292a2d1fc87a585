#!/bin/bash
# Side by side in one run: the throughput bench of an earlier commit and of
# the work tree, taking turns round after round (so a noisy neighbour hits
# both alike), then a table of medians written to benches/COMPARE.md.
#
#   bash benches/compare.sh <commit> [rounds]        # default: 3 rounds
#
# The cases (PGTX_BENCH_ONLY) can be overridden from the environment; each
# round runs each case once for PGTX_BENCH_SECS seconds (default 3).
set -euo pipefail

base=${1:?usage: bash benches/compare.sh <commit> [rounds]}
rounds=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

export PGTX_BENCH_ONLY=${PGTX_BENCH_ONLY:-pgtx1,pgtx16,pgbench,micro,pool4,pool8,r2d2_4,pgbench_c4,notify_latency}
export PGTX_BENCH_ROUNDS=1 PGTX_BENCH_SECS=${PGTX_BENCH_SECS:-3}

# The bench executable `cargo bench --no-run` builds in `dir` with `target`.
build() {
    local dir=$1 target=$2
    (cd "$dir" && CARGO_TARGET_DIR=$target cargo bench --bench throughput --no-run \
        --message-format=json 2>/dev/null) |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | grep throughput | tail -1
}

git -C "$here" worktree add --detach -q "$work/tree" "$base"
before=$(build "$work/tree" "$work/target")
after=$(build "$here" "${CARGO_TARGET_DIR:-$here/target}")
cp "$before" "$work/before"
cp "$after" "$work/after"

log=$work/log
# `micro` writes the results files of the tree it runs in: keep the work
# tree's (the full bench's) and put them back afterwards.
cp "$here/benches/RESULTS.md" "$here/benches/throughput.svg" "$work/"
trap 'cp "$work/RESULTS.md" "$work/throughput.svg" "$here/benches/" 2>/dev/null; git -C "$here" worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
for round in $(seq 1 "$rounds"); do
    # Each goes first in every other round: the slot a build runs in (the
    # machine warming up, say) favours neither.
    order="before after"
    [ $((round % 2)) = 0 ] && order="after before"
    for which in $order; do
        dir=$work/tree
        [ "$which" = after ] && dir=$here
        echo "=== round $round: $which" | tee -a "$log"
        (cd "$dir" && "$work/$which" --bench) >>"$log" 2>&1
    done
done

python3 - "$log" "$base" "$(git -C "$here" rev-parse --short HEAD)" "$rounds" >"$here/benches/COMPARE.md" <<'PY'
import re, statistics, sys
log, base, head, rounds = sys.argv[1:5]
# (case, build) -> one value per run; runs are numbered per build.
data, which, run = {}, None, {}
for line in open(log):
    m = re.match(r"=== round \d+: (\w+)", line)
    if m:
        which = m.group(1)
        run[which] = run.get(which, -1) + 1
        continue
    def keep(case, value):
        data.setdefault((case, which), {})[run[which]] = value
    m = re.match(r".*notification latency.*recv` (\d+) µs, bare tokio-postgres `poll_message` (\d+)", line)
    if m:
        keep("notification latency p50, pgtx Listener (µs)", int(m.group(1)))
        keep("notification latency p50, bare tokio-postgres (µs)", int(m.group(2)))
        continue
    m = re.match(r"\s+round 1/1: (.+?)\s{2,}(\d+) tx/s", line)
    if m:
        keep(m.group(1) + " (tx/s)", int(m.group(2)))
        continue
    m = re.match(r"\| lease acquire \+ release, no I/O \| (\d+) ns", line)
    if m:
        keep("lease acquire + release (ns)", int(m.group(1)))
print("# Before and after, side by side\n")
print(f"`bash benches/compare.sh {base} {rounds}`: the throughput bench of {base} and of")
print(f"the work tree at {head}, taking turns (each first in every other round), {rounds} rounds;")
print("medians, every round in brackets. The peers (pgbench, r2d2_postgres) run the")
print("same code in both columns: how far they move is the run-to-run noise.\n")
print("| case | before | after | after / before |")
print("| --- | --- | --- | --- |")
for case in sorted({c for c, _ in data}):
    b, a = data.get((case, "before")), data.get((case, "after"))
    if not b or not a:
        continue
    mb, ma = statistics.median(b.values()), statistics.median(a.values())
    print(f"| {case} | {mb:g} {list(b.values())} | {ma:g} {list(a.values())} | {ma / mb:.2f} |")
PY
echo "wrote $here/benches/COMPARE.md"
