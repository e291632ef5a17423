#!/usr/bin/env bash
# Runs the whole system on this machine: makes the dev keys if there are
# none, builds both services, starts discount and then catalog, waits until
# both answer, prints the request to try, and stops both on Ctrl-C.
#
#   scripts/run.sh            run until Ctrl-C
#   scripts/run.sh --release  the same with optimised builds
#   scripts/run.sh --smoke    start, check one discounted request and /readyz,
#                             stop both with SIGTERM and check they exit 0
#
# Ports come from DISCOUNT_PORT (11443) and CATALOG_PORT (11080); each
# serves Prometheus metrics on 127.0.0.1, on DISCOUNT_METRICS_PORT and
# CATALOG_METRICS_PORT (the service's port + 1000 unless set: 12443 and
# 12080, clear of the ports of extra discount replicas). Logs come from
# RUST_LOG; both services' go to this terminal, prefixed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

profile=debug
smoke=no
for arg in "$@"; do
  case "$arg" in
    --release) profile=release ;;
    --smoke) smoke=yes ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "run: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

for tool in cargo openssl curl; do
  command -v "$tool" >/dev/null || {
    echo "run: $tool is not installed (Debian/Ubuntu: apt-get install $tool; Rust: https://rustup.rs)" >&2
    exit 1
  }
done

# Text logs: they are read here, prefixed, by a person (JSON otherwise, as
# the output is a pipe).
export LOG_FORMAT=${LOG_FORMAT:-text}
discount_port=${DISCOUNT_PORT:-11443}
catalog_port=${CATALOG_PORT:-11080}
discount_metrics_port=${DISCOUNT_METRICS_PORT:-$((discount_port + 1000))}
catalog_metrics_port=${CATALOG_METRICS_PORT:-$((catalog_port + 1000))}
ports=("$discount_port" "$catalog_port" "$discount_metrics_port" "$catalog_metrics_port")
if [ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" != 4 ]; then
  echo "run: the four ports must differ: DISCOUNT_PORT=$discount_port CATALOG_PORT=$catalog_port DISCOUNT_METRICS_PORT=$discount_metrics_port CATALOG_METRICS_PORT=$catalog_metrics_port (the metrics ports default to each service's port + 1000)" >&2
  exit 2
fi

if [ ! -e keys/cert.pem ] && [ ! -e keys/ca.pem ]; then
  echo "run: no keys in keys/, making development keys"
  scripts/gen-keys.sh
elif [ -e keys/client.pem ] && ! openssl x509 -in keys/client.pem -noout -ext subjectAltName 2>/dev/null | grep -q 'URI:spiffe://'; then
  # Keys made before workload identities: discount would refuse the
  # catalog, and the catalog discount, with every product undiscounted.
  echo "run: keys/ predates workload identities (no spiffe:// URI in keys/client.pem)," >&2
  echo "run: which discount's allow-list and the catalog now check; make new ones with: scripts/gen-keys.sh --renew" >&2
  exit 1
fi

# port_free NAME PORT VARIABLE: stops here if something already listens on
# PORT; wait_for would take it for the service just started. Checked before
# the build, which can take minutes.
port_free() {
  local name=$1 port=$2 variable=$3
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run: port $port for $name is already in use (an earlier run still going?); stop it, or pick another port with $variable=..." >&2
    exit 1
  fi
}

port_free discount "$discount_port" DISCOUNT_PORT
port_free catalog "$catalog_port" CATALOG_PORT
port_free "discount's metrics" "$discount_metrics_port" DISCOUNT_METRICS_PORT
port_free "catalog's metrics" "$catalog_metrics_port" CATALOG_METRICS_PORT

echo "run: building ($profile)"
build_flags=()
[ "$profile" = release ] && build_flags+=(--release)
cargo build --quiet "${build_flags[@]}" -p discount -p catalog

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Where cargo put the binaries: CARGO_TARGET_DIR if set, as cargo does.
bin_dir=${CARGO_TARGET_DIR:-target}/$profile

# start NAME ARGS...: runs the binary NAME in the background, its output
# prefixed with its name.
start() {
  local name=$1
  shift
  "$bin_dir/$name" "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
  pids+=($!)
}

# wait_for NAME PID PORT: until something accepts on PORT, or NAME exits.
wait_for() {
  local name=$1 pid=$2 port=$3
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run: $name exited during start-up; its messages are above" >&2
      exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "run: $name did not open port $port within 10 s" >&2
  exit 1
}

DISCOUNT_METRICS_ADDR="127.0.0.1:$discount_metrics_port" start discount "$discount_port"
wait_for discount "${pids[0]}" "$discount_port"
DISCOUNT_SERVICE_HOST="localhost:$discount_port" CATALOG_METRICS_ADDR="127.0.0.1:$catalog_metrics_port" \
  start catalog "$catalog_port"
wait_for catalog "${pids[1]}" "$catalog_port"

# The request to try, as one line to copy. The smoke run executes this very
# line through bash, so what is printed is what is tested.
request="curl -sS -H 'X-USER-ID: 1' http://localhost:$catalog_port/products"
if [ "$smoke" = yes ]; then
  expected='[{"id":1,"slug":"iphone-x","description":"64GB, black and iOS 12","price_in_cents":99999,"discount_value":{"pct":0.1,"value_in_cents":89999}},{"id":2,"slug":"notebook-avell-g1511","description":"Notebook Gamer Intel Core i7","price_in_cents":150000,"discount_value":{"pct":0.1,"value_in_cents":135000}},{"id":3,"slug":"playstation-4-slim","description":"1TB Console","price_in_cents":32999,"discount_value":{"pct":0.1,"value_in_cents":29699}}]'
  got=$(bash -c "$request")
  if [ "$got" != "$expected" ]; then
    printf 'run: smoke test FAILED\nexpected: %s\ngot:      %s\n' "$expected" "$got" >&2
    exit 1
  fi
  ready=$(curl -sS -o /dev/null -w '%{http_code}' "http://localhost:$catalog_port/readyz")
  if [ "$ready" != 200 ]; then
    echo "run: smoke test FAILED: /readyz answered $ready, expected 200" >&2
    exit 1
  fi
  # The listing just made is counted on both sides.
  for check in "$catalog_metrics_port catalog_listings_total{discount_status=\"applied\"} 1" \
               "$discount_metrics_port discount_grpc_calls_total{code=\"OK\",method=\"ecommerce.Discount/ApplyDiscounts\"} 1"; do
    port=${check%% *} line=${check#* }
    # Read the whole page first: `grep -q` exits at the first match, and
    # under pipefail curl's write error would then read as a missing line.
    metrics=$(curl -sS "http://127.0.0.1:$port/metrics") || metrics=
    if ! grep -qxF "$line" <<<"$metrics"; then
      echo "run: smoke test FAILED: http://127.0.0.1:$port/metrics has no line: $line" >&2
      exit 1
    fi
  done
  # Both must stop cleanly on SIGTERM, as under systemd or Kubernetes.
  for i in 1 0; do
    kill -TERM "${pids[$i]}"
    status=0
    wait "${pids[$i]}" || status=$?
    if [ "$status" != 0 ]; then
      echo "run: smoke test FAILED: process ${pids[$i]} exited $status on SIGTERM, expected 0" >&2
      exit 1
    fi
  done
  pids=()
  echo "run: smoke test passed: the printed line ($request) got the discounted list over TLS gRPC, /readyz is 200, both services counted it in /metrics, both stopped cleanly on SIGTERM"
  exit 0
fi

cat <<MSG

run: discount is on port $discount_port (TLS gRPC), catalog on port $catalog_port (HTTP).
run: metrics: http://127.0.0.1:$catalog_metrics_port/metrics (catalog), http://127.0.0.1:$discount_metrics_port/metrics (discount)
run: try it in another terminal:

    $request

run: press Ctrl-C to stop both.
MSG
# Ctrl-C in the terminal reaches the services too, and they usually exit
# (0, cleanly) before this script's own INT trap runs: a clean exit is a
# stop, anything else a failure.
status=0
wait -n "${pids[@]}" || status=$?
if [ "$status" = 0 ]; then
  echo "run: a service stopped; stopping the other"
  exit 0
fi
echo "run: a service exited with status $status; stopping the other" >&2
exit 1
