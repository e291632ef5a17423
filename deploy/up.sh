#!/usr/bin/env bash
# Starts the Compose stack (deploy/compose.yaml) from the images that
# scripts/images.sh built: makes TLS material in deploy/keys if there is
# none, brings the stack up, waits until the catalog sees every discount
# replica serving, and prints the request to try.
#
#   deploy/up.sh                              three discount replicas
#   deploy/up.sh --scale discount=5           any `up` option is passed on (run
#                                             again without it: back to 3)
#   deploy/up.sh down                         stop and remove everything
#
# The project is COMPOSE_PROJECT_NAME (default: ecommerce); the keys are in
# ECOMMERCE_KEYS (default: deploy/keys); the catalog is published on
# CATALOG_HOST_PORT (default 11080). Uses `docker compose` when it exists,
# else Debian's `docker-compose`.
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
  exit 0
fi

deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$deploy")
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-ecommerce}
export ECOMMERCE_KEYS=${ECOMMERCE_KEYS:-$deploy/keys}
# Absolute: Compose reads relative paths from deploy/, not from here.
mkdir -p "$ECOMMERCE_KEYS"
ECOMMERCE_KEYS=$(cd "$ECOMMERCE_KEYS" && pwd)

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "up: neither 'docker compose' nor 'docker-compose' is installed (Debian: apt-get install docker-compose)" >&2
  exit 1
fi
compose+=(-f "$deploy/compose.yaml")

if [ "${1:-}" = down ]; then
  exec "${compose[@]}" down -v --remove-orphans
fi

for image in ecommerce/catalog ecommerce/discount; do
  docker image inspect "$image:${ECOMMERCE_VERSION:-latest}" >/dev/null 2>&1 || {
    echo "up: no image $image:${ECOMMERCE_VERSION:-latest}; build it first: scripts/images.sh" >&2
    exit 1
  }
done

# The containers run as 65532 and read their keys, which are readable by
# their owner only. As root the keys are given to 65532; otherwise the
# containers run as the user running this script, who owns the keys.
if [ "$(id -u)" = 0 ]; then
  owner=(--owner 65532:65532)
else
  owner=()
  export ECOMMERCE_USER=${ECOMMERCE_USER:-$(id -u):$(id -g)}
fi
# The catalog's /data (its embedded database) belongs to that user.
user=${ECOMMERCE_USER:-65532:65532}
export ECOMMERCE_UID=${user%%:*} ECOMMERCE_GID=${user##*:}
if [ ! -e "$ECOMMERCE_KEYS/cert.pem" ]; then
  echo "up: no keys in $ECOMMERCE_KEYS, making development keys valid for the name discount"
  "$repo/scripts/gen-keys.sh" --dir "$ECOMMERCE_KEYS" --dns discount "${owner[@]}"
elif ! openssl x509 -in "$ECOMMERCE_KEYS/cert.pem" -noout -ext subjectAltName 2>/dev/null | grep -Eq 'DNS:discount(,|$)'; then
  echo "up: $ECOMMERCE_KEYS/cert.pem is not valid for the name discount, which the catalog dials;" >&2
  echo "up: make new keys: scripts/gen-keys.sh --dir $ECOMMERCE_KEYS --force --dns discount ${owner[*]}" >&2
  exit 1
elif [ "$(id -u)" = 0 ]; then
  (cd "$ECOMMERCE_KEYS" && chown 65532:65532 ca.pem cert.pem private.key client.pem client.key)
fi

"${compose[@]}" up -d "$@"

# CATALOG_HOST_PORT is PORT, IP:PORT or [IPv6]:PORT; a port alone is
# published on every address, loopback included.
published=${CATALOG_HOST_PORT:-11080}
host=127.0.0.1
case "$published" in
  *:*) host=${published%:*} ;;
esac
case "$host" in
  0.0.0.0 | "" ) host=127.0.0.1 ;;
  :: | "[::]") host="[::1]" ;;
esac
url="http://$host:${published##*:}"
# As many as are running (after --scale too); the catalog finds new ones
# when it next resolves the name, within 5 s.
replicas=$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
  --filter "label=com.docker.compose.service=discount" | wc -l)
echo "up: waiting for the catalog to see all $replicas discount replicas serving ($url/readyz)"
for _ in $(seq 1 120); do
  ready=$(curl -s --max-time 2 "$url/readyz" || true)
  first=${ready%%$'\n'*}
  if [[ "$first" == "ready: $replicas of $replicas "* ]]; then
    echo "$ready"
    echo
    echo "up: try   curl -H 'X-USER-ID: 1' $url/products"
    echo "up: stop  deploy/up.sh down"
    exit 0
  fi
  sleep 0.5
done
echo "up: the stack did not become ready within 60 s; last /readyz: ${ready:-no answer}" >&2
"${compose[@]}" ps >&2
exit 1
