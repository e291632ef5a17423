#!/usr/bin/env bash
# Deploys the system as a Docker Swarm stack (deploy/swarm/stack.yaml) from
# the images scripts/images.sh built (and PostgreSQL's, HAProxy's and
# Prometheus', built from this machine's packages when missing): makes TLS
# material and the database's passwords in deploy/keys if there are none
# (as deploy/up.sh), deploys, imports the seed's products and customers (deploy/data/) into a
# database that has none, and waits until the catalog sees every discount
# replica serving. Run again, it is an update: a renewed certificate or an
# edited configuration rolls the services that use it (docs/deploy.md).
#
#   docker swarm init --advertise-addr 127.0.0.1    once, if this engine is in no swarm
#   deploy/swarm/up.sh                              deploy (again: an update)
#   deploy/swarm/up.sh down                         remove the stack, its secrets,
#                                                   networks and database volume
#
# The stack is STACK (default: ecommerce); the catalog is published by
# HAProxy on CATALOG_HOST_PORT (default 11080), Prometheus on
# PROMETHEUS_HOST_PORT (default 19090), of the node each runs on;
# the keys are in ECOMMERCE_KEYS (default: deploy/keys); the files to
# import from in ECOMMERCE_DATA (default: deploy/data). Images are used as
# they are on each node (--resolve-image never): with several nodes, load
# them on each, or push them to a registry and drop that flag.
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
  exit 0
fi

swarm=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deploy=$(dirname "$swarm")
repo=$(dirname "$deploy")
STACK=${STACK:-ecommerce}
export CATALOG_HOST_PORT=${CATALOG_HOST_PORT:-11080}
export PROMETHEUS_HOST_PORT=${PROMETHEUS_HOST_PORT:-19090}
export ECOMMERCE_KEYS=${ECOMMERCE_KEYS:-$deploy/keys}
mkdir -p "$ECOMMERCE_KEYS"
ECOMMERCE_KEYS=$(cd "$ECOMMERCE_KEYS" && pwd)
ECOMMERCE_DATA=$(cd "${ECOMMERCE_DATA:-$deploy/data}" && pwd)

# Published in host mode, which takes a port alone (on every address of
# the node), not IP:PORT as Compose does.
for variable in CATALOG_HOST_PORT PROMETHEUS_HOST_PORT; do
  [[ "${!variable}" =~ ^[0-9]+$ ]] || {
    echo "swarm: $variable=${!variable}: give a port alone, such as 11080; Swarm publishes it on every address of the node" >&2
    exit 2
  }
done

state=$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unreachable)
if [ "$state" != active ]; then
  echo "swarm: this Docker engine is not in a swarm (state: $state); make a one-node one with" >&2
  echo "swarm:   docker swarm init --advertise-addr 127.0.0.1" >&2
  exit 1
fi

# Whatever belongs to the stack: its tasks' containers, networks, secrets.
owned() { docker "$1" ls -q --filter "label=com.docker.stack.namespace=$STACK" "${@:2}"; }

if [ "${1:-}" = down ]; then
  docker stack rm "$STACK" >/dev/null 2>&1 || true
  # `stack rm` returns before its containers and networks are gone, and a
  # volume in use cannot be removed.
  for _ in $(seq 1 120); do
    [ -z "$(owned container -a)$(owned network)" ] && break
    sleep 0.5
  done
  [ -z "$(owned container -a)$(owned network)" ] || {
    echo "swarm: the stack's containers or networks are still there after 60 s:" >&2
    docker ps -a --filter "label=com.docker.stack.namespace=$STACK" >&2
    exit 1
  }
  volumes=$(owned volume)
  [ -z "$volumes" ] || docker volume rm $volumes >/dev/null
  echo "swarm: stack $STACK removed, with its secrets, networks and volumes"
  exit 0
fi

database_volume=${STACK}_postgres
down="STACK=$STACK deploy/swarm/up.sh down"
# shellcheck source=deploy/prepare.sh
. "$deploy/prepare.sh"

# Each secret and config named after its content (stack.yaml says why).
version() { sha256sum "$1" | cut -c1-12; }
export STACK \
  CA_V="$(version "$ECOMMERCE_KEYS/ca.pem")" \
  DISCOUNT_CERT_V="$(version "$ECOMMERCE_KEYS/cert.pem")" \
  DISCOUNT_KEY_V="$(version "$ECOMMERCE_KEYS/private.key")" \
  CATALOG_CERT_V="$(version "$ECOMMERCE_KEYS/client.pem")" \
  CATALOG_KEY_V="$(version "$ECOMMERCE_KEYS/client.key")" \
  POSTGRES_PASSWORD_V="$(version "$ECOMMERCE_KEYS/postgres_password")" \
  CATALOG_PASSWORD_V="$(version "$ECOMMERCE_KEYS/catalog_password")" \
  DATABASE_URL_V="$(version "$ECOMMERCE_KEYS/database_url")" \
  HAPROXY_CFG_V="$(version "$deploy/haproxy/haproxy.cfg")" \
  PROMETHEUS_YML_V="$(version "$deploy/prometheus/prometheus.yml")" \
  PROMETHEUS_RULES_V="$(version "$deploy/prometheus/rules.yml")"
# The versions an earlier run replaced, once no task uses them any more
# (Docker refuses to remove one in use: those wait for the next run).
for kind in secret config; do
  for old in $(docker "$kind" ls --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Name}}'); do
    docker "$kind" rm "$old" >/dev/null 2>&1 || true
  done
done

# On a stack already running, a deploy that changes a service's tasks (an
# image, a renewed certificate) is a rolling update of that service, which
# Swarm runs after `stack deploy` returns: each service's task template
# and last update, to tell which to wait for.
services=$(docker service ls -q --filter "label=com.docker.stack.namespace=$STACK")
template() { docker service inspect --format '{{json .Spec.TaskTemplate}}' "$1" | sha256sum | cut -c1-16; }
started() { docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.StartedAt}}{{end}}' "$1"; }
before=$(for service in $services; do echo "$service $(template "$service") $(started "$service")"; done)
# rolled: every service whose tasks changed has an update newer than the
# last one, completed; one rolled back or paused ends the run.
rolled() {
  local service old_template old_started state
  while read -r service old_template old_started; do
    [ "$(template "$service")" != "$old_template" ] || continue
    [ "$(started "$service")" != "$old_started" ] || return 1
    state=$(docker service inspect --format '{{.UpdateStatus.State}}' "$service")
    case "$state" in
      completed) ;;
      paused | rollback_paused | rollback_completed)
        echo "swarm: the update of $(docker service inspect --format '{{.Spec.Name}}' "$service") ended $state:" \
          "$(docker service inspect --format '{{.UpdateStatus.Message}}' "$service")" >&2
        exit 1 ;;
      *) return 1 ;;
    esac
  done <<<"$before"
}

docker stack deploy --resolve-image never -c "$swarm/stack.yaml" "$STACK"

url="http://127.0.0.1:$CATALOG_HOST_PORT"
wait_for() {
  local what=$1 condition=$2
  for _ in $(seq 1 240); do
    if eval "$condition"; then return 0; fi
    sleep 0.5
  done
  echo "swarm: $what did not happen within 120 s; the services:" >&2
  docker stack ps --no-trunc "$STACK" >&2 || true
  exit 1
}
if [ -n "$before" ]; then
  echo "swarm: waiting for the services that changed to be rolled onto their new versions"
  wait_for "the rolling update" rolled
fi
echo "swarm: waiting for the catalog to answer on $url"
wait_for "the catalog answering" 'curl -sf --max-time 2 "$url/healthz" >/dev/null'

# The seed's data into a database that has none, by a one-off catalog on
# the stack's network with the database URL the catalogs have.
catalog() {
  docker run --rm --network "${STACK}_default" --user "$user" --read-only \
    -v "$ECOMMERCE_KEYS/database_url:/run/secrets/database_url:ro" \
    -v "$ECOMMERCE_DATA:/import:ro" -e CATALOG_DATABASE_URL_FILE=/run/secrets/database_url \
    "ecommerce/catalog:${ECOMMERCE_VERSION:-latest}" "$@"
}
# The catalog answers before PostgreSQL's task is in DNS, at times: tried
# again for a minute.
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
for attempt in $(seq 1 60); do
  products=$(catalog export products 2>"$errors") && break
  [ "$attempt" -lt 60 ] || {
    cat "$errors" >&2
    echo "swarm: could not read the products in the database for a minute (the error is above)" >&2
    exit 1
  }
  sleep 1
done
if [ "$(printf '%s' "$products" | tr -d '[:space:]')" = "[]" ]; then
  echo "swarm: the database has no products; importing the seed's from $ECOMMERCE_DATA"
  catalog import products /import/products.csv
  catalog import customers /import/customers.csv
fi

replicas=$(docker service inspect --format '{{.Spec.Mode.Replicated.Replicas}}' "${STACK}_discount")
catalogs=$(docker service inspect --format '{{.Spec.Mode.Replicated.Replicas}}' "${STACK}_catalog")
# HAProxy answers /readyz from each catalog in turn (round robin): twice
# as many ready answers in a row as there are catalogs is every catalog
# ready, not just the one that answered (one catalog, still on a first
# look-up of tasks.discount made before the tasks were in DNS, listed a
# seed body without its discount in CI).
all_ready() {
  local answer
  for _ in $(seq 1 $((2 * catalogs))); do
    answer=$(curl -s --max-time 2 "$url/readyz" || true)
    [[ "$answer" == "ready: $replicas of $replicas "* ]] || return 1
  done
}
echo "swarm: waiting for the $catalogs catalogs to see all $replicas discount replicas serving"
wait_for "every catalog seeing every discount replica serving" all_ready
curl -s --max-time 2 "$url/readyz"
echo
echo "swarm: try   curl -H 'X-USER-ID: 1' $url/products"
echo "swarm: look  http://127.0.0.1:$PROMETHEUS_HOST_PORT/ (Prometheus; Alerts lists the rules and what fires)"
echo "swarm: stop  deploy/swarm/up.sh down"
