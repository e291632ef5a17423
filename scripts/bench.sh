#!/usr/bin/env bash
# Benchmarks catalog and discount on this machine and prints one table; the
# same results go to target/bench/ (results.md, results.json, latency.svg).
#
#   scripts/bench.sh                    10 s per run, 16 and 64 connections
#   scripts/bench.sh --duration 30      longer runs
#   scripts/bench.sh --pin              services on CPU 0, load on CPU 1
#   scripts/bench.sh --quick --debug    1 s per run on a debug build (CI smoke)
#
# Builds the release binaries, makes throw-away keys, starts the services
# afresh for each run on 127.0.0.1, drives them with wrk (HTTP) and our
# grpc-load (gRPC), and stops them. Not part of `cargo test`: timings are
# measured and reported here, never asserted.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

profile=release
args=()
for arg in "$@"; do
  case "$arg" in
    --debug) profile=debug ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$arg") ;;
  esac
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

python3 scripts/bench.py --bin-dir "${CARGO_TARGET_DIR:-$repo/target}/$profile" "${args[@]}"
