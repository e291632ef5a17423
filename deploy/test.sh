#!/usr/bin/env bash
# The Compose test, run by .ci/run: builds the images (scripts/images.sh,
# and PostgreSQL's and HAProxy's from this machine's packages),
# then runs deploy/test.py against deploy/compose.yaml under a throw-away
# project name. Whatever happens, removes every container, network and
# volume of that project before it exits.
set -euo pipefail
deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$deploy")

export ECOMMERCE_TEST_PROJECT="ecomtest$$"
cleanup() {
  local project label
  # The stack, and the one the taken-port case tries to start.
  for project in "$ECOMMERCE_TEST_PROJECT" "${ECOMMERCE_TEST_PROJECT}taken"; do
    label="label=com.docker.compose.project=$project"
    docker ps -aq --filter "$label" | xargs -r docker rm -f >/dev/null
    docker network ls -q --filter "$label" | xargs -r docker network rm >/dev/null
    docker volume ls -q --filter "$label" | xargs -r docker volume rm >/dev/null
  done
}
trap cleanup EXIT

"$repo/scripts/images.sh" --check
# Built each time: an image left by an earlier run may predate this checkout.
"$deploy/postgres/image.sh"
"$deploy/haproxy/image.sh"
"$deploy/prometheus/image.sh"
python3 "$deploy/test.py"
