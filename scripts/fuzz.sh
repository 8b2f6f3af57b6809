#!/usr/bin/env bash
# scripts/fuzz.sh: runs every fuzz target of every package for FUZZTIME
# each (default 20s), found by `go test -list`, so that a new target is
# never left out. Prints one summary line per target at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-20s}
summary=()
for pkg in $($GO list ./...); do
  targets=$($GO test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true)
  for f in $targets; do
    echo "== $pkg $f ($FUZZTIME)"
    out=$($GO test "$pkg" -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZTIME" 2>&1) || { echo "$out"; exit 1; }
    echo "$out" | tail -3
    execs=$(echo "$out" | grep -o 'execs: [0-9]*' | tail -1 | grep -o '[0-9]*' || echo '?')
    summary+=("$pkg $f: $execs executions in $FUZZTIME, no failure")
  done
done
printf '%s\n' "" "fuzz summary:" "${summary[@]}"
