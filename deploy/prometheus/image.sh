#!/usr/bin/env bash
# Builds ecommerce/prometheus:<version> (and :latest) from the Prometheus
# this machine has installed (Debian's prometheus package), since no base
# image can be pulled here. Both stacks run it with
# deploy/prometheus/prometheus.yml and the alerting rules in rules.yml.
#
#   deploy/prometheus/image.sh
#
# FROM scratch (deploy/host-image.sh says why): the prometheus program and
# the libraries it loads, and its web UI's files (Debian's package has the
# classic UI, at /classic/), of moment-timezone's 214 MB only the file the
# UI loads. Runs as 65532; its database is /prometheus, a volume;
# the configuration is read from /etc/prometheus/, which the stacks mount.
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
  exit 0
fi
[ $# -eq 0 ] || { echo "prometheus image: unknown argument: $1 (see --help)" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

prometheus=/usr/bin/prometheus
web=/usr/share/prometheus/web
[ -x "$prometheus" ] && [ -d "$web" ] || {
  echo "prometheus image: Prometheus is not installed (Debian: apt-get install prometheus)" >&2
  exit 1
}
version=$("$prometheus" --version 2>&1 | awk 'NR == 1 { sub(/\+.*/, "", $3); print $3 }')

# shellcheck source=deploy/host-image.sh
. "$repo/deploy/host-image.sh"
image_start prometheus
image_copy "$prometheus"
image_copy_libraries "$prometheus"
image_user prometheus 65532
# The UI's files are symlinks into other packages: copied as files.
mkdir -p "$root$web/static"
cp -a "$web/templates" "$root$web/"
for item in "$web"/static/*; do
  [ "$(basename "$item")" = moment-timezone ] || cp -rL "$item" "$root$web/static/"
done
# Of moment-timezone, only the one file the graph page loads (780 KB; the
# directory is 214 MB of time zone data in other forms).
mkdir -p "$root$web/static/moment-timezone"
cp -L "$web/static/moment-timezone/moment-timezone-with-data.min.js" "$root$web/static/moment-timezone/"
mkdir -p "$root/etc/prometheus" "$root/prometheus"
chown 65532:65532 "$root/prometheus"

image_build "ecommerce/prometheus:$version" ecommerce/prometheus:latest <<DOCKERFILE
LABEL org.opencontainers.image.title="ecommerce prometheus" \\
      org.opencontainers.image.description="Prometheus $version from this machine's Debian package, scraping the ecommerce stacks" \\
      org.opencontainers.image.version="$version"
USER 65532:65532
EXPOSE 9090
VOLUME /prometheus
ENTRYPOINT ["$prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--storage.tsdb.retention.time=7d", "--web.listen-address=:9090"]
DOCKERFILE
