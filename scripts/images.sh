#!/usr/bin/env bash
# Builds the container images ecommerce/catalog and ecommerce/discount, each
# tagged :<version> (from its Cargo.toml) and :latest, from this checkout.
#
#   scripts/images.sh          build both
#   scripts/images.sh --check  also run each image and check what it holds
#
# No base image is pulled (there may be no registry to pull from): each
# image is FROM scratch and holds one file, the release binary, linked
# statically with glibc (-C target-feature=+crt-static), so it needs no
# shared library, no shell and no package manager. glibc 2.34 and later
# carry the `files` and `dns` name services inside libc, so a static binary
# still resolves names through /etc/hosts and /etc/resolv.conf, which
# Docker and Kubernetes mount into every container.
#
# The images run as user 65532 (no root), write nothing (fit for a
# read-only root filesystem), and carry OCI labels (source, version,
# revision). Each checks its own health with `<binary> --healthcheck`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

check=no
for arg in "$@"; do
  case "$arg" in
    --check) check=yes ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "images: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

for tool in cargo docker readelf; do
  command -v "$tool" >/dev/null || {
    echo "images: $tool is not installed (docker: apt-get install docker.io; readelf: apt-get install binutils)" >&2
    exit 1
  }
done
docker info >/dev/null 2>&1 || {
  echo "images: cannot reach the Docker engine (is dockerd running, and may this user use it?): $(docker info 2>&1 | tail -1)" >&2
  exit 1
}

# The host's own target named explicitly: RUSTFLAGS then apply to the
# binaries only, not to build scripts and proc macros, which cannot be
# static. The binaries land in <target dir>/<triple>/release, apart from
# the dynamic ones in <target dir>/release; cargo says where its target
# directory is (CARGO_TARGET_DIR, or build.target-dir in a config file).
triple=$(rustc -vV | sed -n 's/^host: //p')
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || { echo "images: cargo metadata did not name the target directory" >&2; exit 1; }
case "$triple" in
  *-linux-gnu) ;;
  *) echo "images: builds on a *-linux-gnu host only (this is $triple)" >&2; exit 1 ;;
esac
echo "images: building static release binaries for $triple"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --locked --release --target "$triple" -p catalog -p discount

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
source_url=$(git config --get remote.origin.url 2>/dev/null || true)
source_url=${source_url:-$repo}

context=$(mktemp -d)
trap 'rm -rf "$context" "$context.log"' EXIT

# build SERVICE PORT ADMIN_PORT DESCRIPTION [ENV...]
build() {
  local service=$1 port=$2 admin=$3 description=$4 var extra_env=""
  shift 4
  [ $# -gt 0 ] && extra_env=" $*"
  local binary="$target_dir/$triple/release/$service"
  if readelf -d "$binary" | grep -q '(NEEDED)'; then
    echo "images: $binary needs shared libraries; it would not start FROM scratch:" >&2
    readelf -d "$binary" | grep '(NEEDED)' >&2
    exit 1
  fi
  local version
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$service/Cargo.toml" | head -1)
  var=$(echo "$service" | tr '[:lower:]' '[:upper:]')
  rm -rf "${context:?}"/*
  # Debug sections off: line tables help a backtrace on a developer's
  # machine, but are most of the file's size.
  objcopy --strip-debug "$binary" "$context/$service"
  # The admin listener (metrics and probes) is on by default in the image,
  # on every interface of the container: the kubelet, Docker's health
  # check and Prometheus reach it there. 0.0.0.0, not ::, because Docker's
  # default networks turn IPv6 off inside the container.
  # The build's own output only when it fails (the legacy builder warns
  # that it is deprecated on every run).
  if ! docker build --quiet --tag "ecommerce/$service:$version" --tag "ecommerce/$service:latest" \
    -f - "$context" >"$context.log" 2>&1 <<DOCKERFILE
FROM scratch
COPY $service /$service
LABEL org.opencontainers.image.title="ecommerce $service" \\
      org.opencontainers.image.description="$description" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.revision="$revision" \\
      org.opencontainers.image.source="$source_url" \\
      org.opencontainers.image.licenses="MIT"
ENV ${var}_LISTEN_ADDR=0.0.0.0 ${var}_METRICS_ADDR=0.0.0.0:$admin$extra_env
EXPOSE $port $admin
USER 65532:65532
HEALTHCHECK --interval=5s --timeout=4s --start-period=5s --retries=3 CMD ["/$service", "--healthcheck"]
ENTRYPOINT ["/$service"]
DOCKERFILE
  then
    cat "$context.log" >&2
    echo "images: docker build of ecommerce/$service failed" >&2
    exit 1
  fi
  local size
  size=$(docker image inspect --format '{{.Size}}' "ecommerce/$service:$version")
  printf 'images: ecommerce/%s:%s and :latest, %.1f MB, revision %s\n' \
    "$service" "$version" "$(awk "BEGIN { print $size / 1000000 }")" "$revision"
}

build discount 11443 12443 "The Discount gRPC service over mutual TLS"
# The catalog's embedded database in /data: the image's root is read-only
# where it runs (Compose, Kubernetes), which mount a writable /data.
build catalog 11080 12080 "The catalog HTTP API, a client of discount" \
  CATALOG_DATABASE_URL=sqlite:///data/catalog.db

if [ "$check" = yes ]; then
  for service in catalog discount; do
    user=$(docker image inspect --format '{{.Config.User}}' "ecommerce/$service:latest")
    [ "$user" = 65532:65532 ] || { echo "images: ecommerce/$service runs as '$user', not 65532" >&2; exit 1; }
    # The image's only file must run with no library and no shell.
    out=$(docker run --rm --read-only "ecommerce/$service:latest" --version)
    echo "images: ecommerce/$service runs as $user, read-only: $out"
  done
fi
