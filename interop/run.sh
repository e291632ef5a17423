#!/usr/bin/env bash
# Proves wire compatibility with Python grpcio (gRPC's C core): a grpcio
# client against our discount, our catalog against a grpcio discount, and
# grpcio's health and reflection clients. See interop/README.md.
#
# Needs python3 (with venv) and openssl; installs pinned grpcio into a
# virtual environment under target/ (reused between runs), generates the
# Python stubs from proto/ecommerce.proto and throw-away keys into a
# temporary directory, builds the binaries, and runs interop/interop.py.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

for tool in python3 openssl cargo; do
  command -v "$tool" >/dev/null || { echo "interop: $tool is not installed" >&2; exit 1; }
done

venv=${INTEROP_VENV:-$repo/target/interop-venv}
if [ ! -x "$venv/bin/python" ]; then
  echo "interop: creating a virtual environment in $venv"
  python3 -m venv "$venv" || {
    echo "interop: python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  }
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r interop/requirements.txt

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/stubs"
"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$work/stubs" --grpc_python_out="$work/stubs" proto/ecommerce.proto
bash scripts/gen-keys.sh --dir "$work/keys" >/dev/null

cargo build --quiet -p discount -p catalog
"$venv/bin/python" interop/interop.py --bin-dir "${CARGO_TARGET_DIR:-$repo/target}/debug" --keys "$work/keys" --stubs "$work/stubs"
