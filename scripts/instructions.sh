#!/usr/bin/env bash
# Instructions per listing, counted by callgrind (scripts/callgrind.py): the
# working tree's, and each revision's named, in one table. A count does not
# move with the machine's load, so a change to the request path is compared
# with the commit before it however noisy the machine is.
#
#   scripts/instructions.sh              the working tree
#   scripts/instructions.sh HEAD~1       HEAD~1, then the working tree
#   scripts/instructions.sh A B --only   A and B, not the working tree
#   scripts/instructions.sh --top 15     also each side's 15 most costly
#                                        functions per listing, inclusive
#
# Each revision is built from `git archive` in target/instructions/<commit>/
# (kept, so a second run reuses the build), without touching this work tree
# or .git. Needs valgrind (Debian: apt-get install valgrind).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

revisions=()
tree=yes
top=()
while [ $# -gt 0 ]; do
  arg=$1
  shift
  case "$arg" in
    --only) tree=no ;;
    --top) [ $# -gt 0 ] || { echo "instructions: --top needs a number" >&2; exit 2; }
           top=(--top "$1"); shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    -*) echo "instructions: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) revisions+=("$arg") ;;
  esac
done
[ "$tree" = yes ] || [ ${#revisions[@]} -gt 0 ] || {
  echo "instructions: --only needs at least one revision" >&2
  exit 2
}
command -v valgrind >/dev/null || {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "instructions: installing valgrind (Debian package)" >&2
    apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
  else
    echo "instructions: valgrind is not installed (Debian/Ubuntu: sudo apt-get install valgrind)" >&2
    exit 1
  fi
}

build=(cargo build --quiet --release -p discount -p catalog)
bin_dirs=()
for revision in "${revisions[@]}"; do
  commit=$(git rev-parse --verify --quiet "$revision^{commit}") \
    || { echo "instructions: $revision is not a commit here" >&2; exit 1; }
  base="$repo/target/instructions/$commit"
  if [ ! -x "$base/target/release/catalog" ] || [ ! -x "$base/target/release/discount" ]; then
    rm -rf "$base/src" && mkdir -p "$base/src"
    git archive "$commit" | tar -x -C "$base/src"
    echo "instructions: building $(git log -1 --format='%h %s' "$commit")" >&2
    (cd "$base/src" && CARGO_TARGET_DIR="$base/target" "${build[@]}")
  fi
  bin_dirs+=(--bin-dir "$base/target/release")
done
if [ "$tree" = yes ]; then
  echo "instructions: building the working tree" >&2
  "${build[@]}"
  bin_dirs+=(--bin-dir "${CARGO_TARGET_DIR:-$repo/target}/release")
fi

python3 scripts/callgrind.py "${bin_dirs[@]}" "${top[@]}"
