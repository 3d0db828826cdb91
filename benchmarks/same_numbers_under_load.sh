#!/usr/bin/env bash
# Same inputs, same numbers: the same run on a quiet machine and beside a CPU hog (busy Python
# processes), each with a fresh cache, then every results.csv row compared on (extractor,
# variant, task, metric, seed). Timing metrics (names ending in _s) differ by nature and are
# counted apart; every other row must be identical, or run.json must list it in time_capped.
#
#   flock /tmp/cpu-heavy.lock benchmarks/same_numbers_under_load.sh [OUT] [PROFILE] [HOGS]
set -u
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/same-numbers}
PROFILE=${2:-quick}
HOGS=${3:-2}
PYTHON=${PYTHON:-.venv/bin/python}
rm -rf "$OUT" && mkdir -p "$OUT"

run() {  # run-id
    echo "$1: start $(date +%T), $(uptime | sed 's/.*load/load/')"
    /usr/bin/time -f "$1: wall %e s" "$PYTHON" -m bench run --profile "$PROFILE" --out "$OUT" \
        --run-id "$1" --cache "$OUT/cache-$1" --no-report > "$OUT/$1.out" 2> "$OUT/$1.err"
    echo "$1: exit status $?; $(tail -1 "$OUT/$1.err")"
}

run quiet
pids=()
for _ in $(seq "$HOGS"); do python3 -c "while True: pass" & pids+=($!); done
sleep 2
run hog
kill "${pids[@]}"

"$PYTHON" - "$OUT" <<'PY'
import json
import sys

import pandas as pd

out = sys.argv[1]
key = ["extractor", "variant", "task", "metric", "seed"]
values = {run: pd.read_csv(f"{out}/{run}/results.csv").set_index(key)["value"]
          for run in ("quiet", "hog")}
both = pd.concat([values["quiet"].rename("quiet"), values["hog"].rename("hog")], axis=1)
timing = both.index.get_level_values("metric").str.endswith("_s")
differ = both["quiet"].ne(both["hog"])
print(f"rows: {len(values['quiet'])} quiet, {len(values['hog'])} hog, "
      f"same keys: {set(values['quiet'].index) == set(values['hog'].index)}")
print(f"differing rows: {int((differ & ~timing).sum())} scores, {int((differ & timing).sum())} "
      f"timings (*_s); largest score difference "
      f"{float((both.loc[~timing, 'quiet'] - both.loc[~timing, 'hog']).abs().max()):.3g}")
for run in ("quiet", "hog"):
    info = json.load(open(f"{out}/{run}/run.json"))
    fit = {k: round(v["fit_s"], 1) for k, v in info.get("timings", {}).items() if "fit_s" in v}
    print(f"{run}: status {info.get('status')}, time_capped {len(info.get('time_capped', []))}, "
          f"run {info.get('total_s', 0):.1f} s, fit_s {fit}")
if (differ & ~timing).any():
    print(both[differ & ~timing].head(20))
PY
