#!/usr/bin/env bash
# The Swarm test, run by .ci/run: builds the images (scripts/images.sh; the
# PostgreSQL and HAProxy ones from this machine's packages), makes a one-node swarm if
# this engine is in none, and runs deploy/swarm/test.py. Whatever happens,
# removes the stack it deployed and leaves the swarm if it made it.
set -euo pipefail
swarm=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$(dirname "$swarm")")

export STACK="ecomswarm$$"
made_swarm=no
# `swarm init` also makes the network docker_gwbridge, which `swarm leave`
# keeps: removed too when this test made it.
gwbridge_before=$(docker network ls -q --filter name='^docker_gwbridge$')
cleanup() {
  STACK=$STACK "$swarm/up.sh" down >/dev/null 2>&1 || true
  if [ "$made_swarm" = yes ]; then
    docker swarm leave --force >/dev/null 2>&1 || true
    [ -n "$gwbridge_before" ] || docker network rm docker_gwbridge >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

"$repo/scripts/images.sh"
# Built each time: an image left by an earlier run may predate this checkout.
"$repo/deploy/postgres/image.sh"
"$repo/deploy/haproxy/image.sh"
"$repo/deploy/prometheus/image.sh"
state=$(docker info --format '{{.Swarm.LocalNodeState}}')
case "$state" in
  active) echo "swarm test: using the swarm this engine is in" ;;
  inactive)
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    made_swarm=yes
    echo "swarm test: made a one-node swarm; it is left at the end" ;;
  *) echo "swarm test: this engine's swarm is $state; neither active nor inactive, so not touched" >&2; exit 1 ;;
esac
python3 "$swarm/test.py"
