#!/usr/bin/env bash
# Builds ecommerce/haproxy:<version> (and :latest) from the HAProxy this
# machine has installed (Debian's haproxy package), since no base image can
# be pulled here. The Compose and Swarm stacks put it in front of their
# catalog replicas (deploy/haproxy/haproxy.cfg).
#
#   deploy/haproxy/image.sh
#
# FROM scratch (deploy/host-image.sh says why): the haproxy program and the
# shared libraries it loads, nothing else; it runs as 65532, and reads its
# configuration from /etc/haproxy/haproxy.cfg, which the stack mounts.
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
  exit 0
fi
[ $# -eq 0 ] || { echo "haproxy image: unknown argument: $1 (see --help)" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

haproxy=/usr/sbin/haproxy
[ -x "$haproxy" ] || {
  echo "haproxy image: HAProxy is not installed (Debian: apt-get install haproxy)" >&2
  exit 1
}
version=$("$haproxy" -v | awk 'NR == 1 { sub(/-.*/, "", $3); print $3 }')

# shellcheck source=deploy/host-image.sh
. "$repo/deploy/host-image.sh"
image_start haproxy
image_copy "$haproxy"
image_copy_libraries "$haproxy"
image_user haproxy 65532
mkdir -p "$root/etc/haproxy"
"$haproxy" -c -f "$repo/deploy/haproxy/haproxy.cfg" >/dev/null 2>"$context/check.log" || {
  cat "$context/check.log" >&2
  echo "haproxy image: deploy/haproxy/haproxy.cfg is not valid" >&2
  exit 1
}

image_build "ecommerce/haproxy:$version" ecommerce/haproxy:latest <<DOCKERFILE
LABEL org.opencontainers.image.title="ecommerce haproxy" \\
      org.opencontainers.image.description="HAProxy $version from this machine's Debian package, in front of the catalog replicas" \\
      org.opencontainers.image.version="$version"
USER 65532:65532
EXPOSE 11080
STOPSIGNAL SIGUSR1
ENTRYPOINT ["$haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
DOCKERFILE
