#!/usr/bin/env bash
# Starts the Compose stack (deploy/compose.yaml) from the images that
# scripts/images.sh built (and builds the PostgreSQL and HAProxy images
# from this machine's packages when missing): makes TLS material and the
# database's passwords in deploy/keys if there are none, brings the stack
# up, imports the seed's products and customers (deploy/data/) into a
# database that has none, waits until the catalogs see every discount
# replica serving, and prints the request to try.
#
#   deploy/up.sh                              three discount replicas, two catalogs
#   deploy/up.sh --scale discount=5           any `up` option is passed on (run
#                                             again without it: back to 3)
#   deploy/up.sh down                         stop and remove everything, the
#                                             database's volume included
#
# The project is COMPOSE_PROJECT_NAME (default: ecommerce); the keys are in
# ECOMMERCE_KEYS (default: deploy/keys); the catalog is published on
# CATALOG_HOST_PORT (default 11080), Prometheus on PROMETHEUS_HOST_PORT
# (default 127.0.0.1:19090); the files the catalogs can import
# from are in ECOMMERCE_DATA (default: deploy/data). Uses `docker compose` when it exists,
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
export ECOMMERCE_DATA=${ECOMMERCE_DATA:-$deploy/data}
ECOMMERCE_DATA=$(cd "$ECOMMERCE_DATA" && pwd)

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

database_volume=${COMPOSE_PROJECT_NAME}_postgres
down="COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME deploy/up.sh down"
# shellcheck source=deploy/prepare.sh
. "$deploy/prepare.sh"

# A port taken on the host, or a container that fails, fails `up` half
# way: said plainly, with the failed containers' own last lines (the
# cause is there, and `down` removes them). A stack that was not there
# before is removed, with the volumes this run made; one that was is left
# as it is.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
label="label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
volumes_before=$(docker volume ls -q --filter "$label")
containers_before=$(docker ps -aq --filter "$label")
if ! "${compose[@]}" up -d "$@" 2>&1 | tee "$log"; then
  if grep -Eq 'port is already allocated|address already in use' "$log"; then
    # Which of the two published ports: Docker names it, as "Bind for
    # IP:PORT failed" (another container has it) or "listen tcp4 IP:PORT:
    # bind" (another program).
    taken=$(grep -Eo '(Bind for|listen tcp[46]?) [^ ]+' "$log" | head -1 | awk '{ sub(/:$/, "", $3); print $3 }' || true)
    prometheus=${PROMETHEUS_HOST_PORT:-127.0.0.1:19090}
    variable=CATALOG_HOST_PORT example=127.0.0.1:18080
    if [ -n "$taken" ] && [ "${taken##*:}" = "${prometheus##*:}" ]; then
      variable=PROMETHEUS_HOST_PORT example=127.0.0.1:19091
    fi
    echo "up: port ${taken:-${CATALOG_HOST_PORT:-11080}} on this host is taken by another program or container; set $variable to a free one ($variable=$example deploy/up.sh)" >&2
  fi
  for container in $(docker ps -aq --filter "$label" --filter status=exited); do
    code=$(docker inspect --format '{{.State.ExitCode}}' "$container")
    [ "$code" != 0 ] || continue
    echo "up: $(docker inspect --format '{{.Name}}' "$container" | tr -d /) exited with $code; its last lines:" >&2
    docker logs --tail 10 "$container" 2>&1 | sed 's/^/    /' >&2
  done
  if [ -n "$containers_before" ]; then
    echo "up: the stack did not start; it was there before this run, so it is left as it is (docker ps; $down removes it)" >&2
    exit 1
  fi
  echo "up: the stack did not start; removing what this run made" >&2
  "${compose[@]}" down --remove-orphans >/dev/null 2>&1 || true
  for volume in $(docker volume ls -q --filter "$label"); do
    grep -qxF "$volume" <<<"$volumes_before" || docker volume rm "$volume" >/dev/null || true
  done
  exit 1
fi

# The seed's data into a database that has none: a new volume answers the
# seed's bodies, and data imported since is never overwritten.
run_catalog=("${compose[@]}" run --rm --no-deps -T migrate)
products=$("${run_catalog[@]}" export products) || {
  echo "up: could not read the products in the database (the error is above); the stack is up: deploy/up.sh down stops it" >&2
  exit 1
}
if [ "$(printf '%s' "$products" | tr -d '[:space:]')" = "[]" ]; then
  echo "up: the database has no products; importing the seed's from $ECOMMERCE_DATA"
  "${run_catalog[@]}" import products /import/products.csv
  "${run_catalog[@]}" import customers /import/customers.csv
fi

# url PUBLISHED: where to reach a port published as PUBLISHED, which is
# PORT, IP:PORT or [IPv6]:PORT; a port alone is published on every
# address, loopback included.
url() {
  local published=$1 host=127.0.0.1
  case "$published" in
    *:*) host=${published%:*} ;;
  esac
  case "$host" in
    0.0.0.0 | "" ) host=127.0.0.1 ;;
    :: | "[::]") host="[::1]" ;;
  esac
  echo "http://$host:${published##*:}"
}
url=$(url "${CATALOG_HOST_PORT:-11080}")
# As many as are running (after --scale too); the catalog finds new ones
# when it next resolves the name, within 5 s.
replicas=$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
  --filter "label=com.docker.compose.service=discount" | wc -l)
catalogs=$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
  --filter "label=com.docker.compose.service=catalog" | wc -l)
# HAProxy answers /readyz from each catalog in turn (round robin): twice
# as many ready answers in a row as there are catalogs is every catalog
# ready, not just the one that answered.
echo "up: waiting for the $catalogs catalogs to see all $replicas discount replicas serving ($url/readyz)"
in_a_row=0
for _ in $(seq 1 240); do
  ready=$(curl -s --max-time 2 "$url/readyz" || true)
  first=${ready%%$'\n'*}
  if [[ "$first" == "ready: $replicas of $replicas "* ]]; then
    in_a_row=$((in_a_row + 1))
  else
    in_a_row=0
    sleep 0.5
  fi
  if [ "$in_a_row" -ge $((2 * catalogs)) ]; then
    echo "$ready"
    echo
    echo "up: try   curl -H 'X-USER-ID: 1' $url/products"
    echo "up: look  $(url "${PROMETHEUS_HOST_PORT:-127.0.0.1:19090}")/ (Prometheus; Alerts lists the rules and what fires)"
    echo "up: stop  deploy/up.sh down"
    exit 0
  fi
done
echo "up: the stack did not become ready within 2 minutes; last /readyz: ${ready:-no answer}" >&2
"${compose[@]}" ps >&2
exit 1
