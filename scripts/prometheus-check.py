#!/usr/bin/env python3
"""Checks both services' metrics with Prometheus' own tools.

1. Starts discount and catalog (the built binaries, keys made by
   gen-keys.sh in a temporary directory) with --metrics-addr on loopback.
2. Sends three listings for customer 1 and runs `promtool check metrics`
   on each service's /metrics: it must pass with nothing to say.
3. Starts a real Prometheus on loopback, with a generated configuration
   scraping both every second, and asks its HTTP API until `up` is 1 for
   both targets; then sends five more listings and waits until
   Prometheus sees the listing counter rise by five.

Everything it starts is stopped, and its files removed, however it ends.
Needs promtool and prometheus (Debian: apt-get install prometheus).

    python3 scripts/prometheus-check.py [--bin-dir target/debug]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import services  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 60  # seconds for Prometheus to start and scrape; a pass takes a few
APPLIED = 'catalog_listings_total{discount_status="applied"}'


def fail(message):
    print(f"prometheus-check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def get(url):
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


def listings(catalog_port, count):
    for _ in range(count):
        request = urllib.request.Request(f"http://127.0.0.1:{catalog_port}/products",
                                         headers={"X-USER-ID": "1"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            status = answer.headers.get("X-Discount-Status")
            if answer.status != 200 or status != "applied":
                fail(f"a listing for customer 1 answered {answer.status}, X-Discount-Status {status}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(prometheus_port, promql):
    """The instant vector for `promql`: [(labels, value)]."""
    url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = json.loads(get(url))
    if answer.get("status") != "success":
        fail(f"Prometheus refused {promql!r}: {answer}")
    return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]


def wait_for(what, check):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            if check():
                return time.monotonic()
        except OSError:
            pass  # Prometheus not listening yet
        time.sleep(0.25)
    fail(f"{what} within {WAIT} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    parser.add_argument("--bin-dir", default=os.path.join(target, "debug"),
                        help="where the discount and catalog binaries are (default: $CARGO_TARGET_DIR/debug, "
                             "else target/debug; build them with cargo build -p discount -p catalog)")
    args = parser.parse_args()
    for binary in ("discount", "catalog"):
        if not os.access(os.path.join(args.bin_dir, binary), os.X_OK):
            fail(f"no {binary} binary in {args.bin_dir}: build it first (cargo build -p discount -p catalog), "
                 "or name the directory with --bin-dir")
    for tool in ("promtool", "prometheus"):
        if not shutil.which(tool):
            fail(f"{tool} is not installed (Debian/Ubuntu: apt-get install prometheus)")

    work = tempfile.mkdtemp(prefix="prometheus-check-")
    started = []
    try:
        keys = os.path.join(work, "keys")
        subprocess.run([os.path.join(REPO, "scripts", "gen-keys.sh"), "--dir", keys],
                       check=True, stdout=subprocess.DEVNULL)
        on = ["--metrics-addr", "127.0.0.1:0"]
        discount = services.start_discount(args.bin_dir, keys, extra=on)
        started.append(discount)
        catalog = services.start_catalog(args.bin_dir, keys, discount.port, extra=on)
        started.append(catalog)
        listings(catalog.port, 3)

        for name, service in (("catalog", catalog), ("discount", discount)):
            text = get(f"http://127.0.0.1:{service.metrics_port}/metrics")
            lint = subprocess.run(["promtool", "check", "metrics"], input=text,
                                  capture_output=True, text=True)
            said = (lint.stdout + lint.stderr).strip()
            if lint.returncode != 0 or said:
                fail(f"promtool check metrics on {name} (exit {lint.returncode}):\n{said}")
            series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
            print(f"prometheus-check: promtool check metrics: {name} passes ({series} series)")

        prometheus_port = free_port()
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                    f"  - job_name: catalog\n    static_configs: [{{targets: ['127.0.0.1:{catalog.metrics_port}']}}]\n"
                    f"  - job_name: discount\n    static_configs: [{{targets: ['127.0.0.1:{discount.metrics_port}']}}]\n")
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={work}/data",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started.append(prometheus)
        began = time.monotonic()

        def both_up():
            up = {labels["job"]: value for labels, value in query(prometheus_port, "up")}
            return up == {"catalog": 1.0, "discount": 1.0}

        seen = wait_for("Prometheus did not find both targets up", both_up)
        print(f"prometheus-check: up == 1 for catalog and discount, {seen - began:.1f} s after start")

        def applied():
            values = query(prometheus_port, APPLIED)
            return values[0][1] if values else None

        wait_for("Prometheus did not scrape the listing counter", lambda: applied() is not None)
        before = applied()
        listings(catalog.port, 5)
        sent = time.monotonic()
        seen = wait_for("Prometheus did not see the listing counter rise by 5",
                        lambda: applied() >= before + 5)
        total = before + 5

        def discount_calls():
            calls = query(prometheus_port, 'sum(discount_grpc_calls_total{method="ecommerce.Discount/ApplyDiscounts",code="OK"})')
            return calls[0][1] if calls else 0

        wait_for(f"Prometheus did not see discount's ApplyDiscounts counter reach {total:.0f}",
                 lambda: discount_calls() >= total)
        print(f"prometheus-check: {APPLIED} went {before:.0f} -> {applied():.0f} "
              f"({seen - sent:.1f} s after the traffic); discount counted {discount_calls():.0f} ApplyDiscounts OK")
        print("prometheus-check: passed")
    finally:
        for process in reversed(started):
            if isinstance(process, services.Service):
                process.stop()
            else:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
