#!/usr/bin/env bash
# Benchmarks catalog and discount on this machine and prints one table; the
# same results go to target/bench/ (results.md, results.json, latency.svg).
#
#   scripts/bench.sh                    10 s per run, 16 and 64 connections
#   scripts/bench.sh --duration 30      longer runs
#   scripts/bench.sh --pin              services on CPU 0, load on CPU 1
#   scripts/bench.sh --quick --debug    1 s per run on a debug build (CI smoke)
#   scripts/bench.sh --scenarios million,million1
#                                       1,000,000 products in PostgreSQL
#   scripts/bench.sh --baseline REV --rounds 3 --scenarios ceiling,shared
#                                       each run also on commit REV, the two
#                                       interleaved, and their ratio
#                                       (--compare REV is the same)
#
# Builds the release binaries, makes throw-away keys, starts the services
# afresh for each run on 127.0.0.1, drives them with wrk (HTTP) and our
# grpc-load (gRPC), and stops them. --baseline builds REV from `git archive`
# in target/bench-baseline/. Not part of `cargo test`: timings are
# measured and reported here, never asserted.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

profile=release
baseline=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --baseline|--compare) baseline=${2:?$1 needs a commit, e.g. $1 HEAD~1}; shift ;;
    --baseline=*|--compare=*) baseline=${1#*=} ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench: installing wrk (Debian package)"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  else
    echo "bench: wrk is not installed (Debian/Ubuntu: sudo apt-get install wrk)" >&2
    exit 1
  fi
fi
for tool in python3 openssl cargo taskset; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is not installed" >&2; exit 1; }
done

echo "bench: building ($profile)" >&2
build=(cargo build --quiet -p discount -p catalog -p bench)
[ "$profile" = release ] && build+=(--release)
"${build[@]}"

if [ -n "$baseline" ]; then
  # The other commit's sources, without touching this work tree or .git.
  commit=$(git rev-parse --verify --quiet "$baseline^{commit}") \
    || { echo "bench: --baseline $baseline is not a commit here" >&2; exit 1; }
  base="$repo/target/bench-baseline"
  rm -rf "$base/src" && mkdir -p "$base/src"
  git archive "$commit" | tar -x -C "$base/src"
  echo "bench: building the baseline, $(git log -1 --format='%h %s' "$commit") ($profile)" >&2
  (cd "$base/src" && CARGO_TARGET_DIR="$base/target" "${build[@]}")
  args+=(--baseline-bin-dir "$base/target/$profile" --baseline-name "$(git rev-parse --short "$commit")")
fi

python3 scripts/bench.py --bin-dir "${CARGO_TARGET_DIR:-$repo/target}/$profile" "${args[@]}"
