"""Benchmarks the catalog and discount on this machine; see scripts/bench.sh.

Scenarios, each at every connection count (default 16 and 64); --scenarios
picks some of them (default all):
  1. ceiling   catalog GET /products, no X-USER-ID: the HTTP-only path
  2. shared    catalog GET /products, X-USER-ID: 1, one shared channel (default)
  3. dial      the same with --dial-per-request (the seed's connection model)
  4. grpc      discount ApplyDiscount directly over mutual TLS (grpc-load)
  5. replicas3 as shared, with three discount replicas behind one catalog
               (--discount-host 127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3)
  6. kill3     as replicas3, and the first replica listed is SIGKILLed halfway
               through the measured run (not the warm-up)
  7. observed  as shared, with both services' --metrics-addr on and each
               scraped once a second during the run (a Prometheus at 1 s)
  8. traced    as observed, and both services export their spans over OTLP
               to bench's otlp-sink on loopback (a collector that keeps
               nothing), every one of them (--max-traces-per-second far
               above the load, so that this stays the cost of exporting
               everything); the spans it received are in results.json
  9. sighup    as shared, with a --discount-ca of 10,000 CA certificates
               (the real one among them) and 10 SIGHUPs a second sent to
               the catalog during the measured run (issue 25)
 10. caller    as traced but at the default --max-traces-per-second (100),
               with both samplers at 1% of new traces
               (parentbased_traceidratio 0.01) and every request its own
               trace with a sampled traceparent, as a caller tracing
               everything sends (issue 25); spans and listings are in
               results.json
 11. million   catalog GET /products (a page of 100, no X-USER-ID) with
               1,000,000 products (10,000 with --quick) in PostgreSQL: a throw-away cluster made
               for the run (scripts/bench_data.py), loaded once with
               `catalog import`; each run's catalog is timed from start to
               /readyz 200 (all products in memory)
 12. million1  as million, X-USER-ID 1: one ApplyDiscounts per page

The other scenarios use the seed's three products, in an SQLite file in a
temporary directory. --baseline-bin-dir runs every run twice, on the
baseline's binaries and then on these, interleaved (--rounds times), and
reports these/baseline requests per second as ratios.

Services are started afresh for each run (so peak RSS is per scenario), on
127.0.0.1 with ports the OS picks, logging at warn. HTTP load comes from wrk,
gRPC load from our grpc-load; every answer is checked, and anything but a
200 with the expected body counts as an error. Listings for a user whose
X-Discount-Status is not "applied" are counted as not_applied; in kill3 such
a listing may also carry the undiscounted body without being an error, as
it must while the catalog learns that a replica is gone.

With three replicas the discount figures are of all three together: CPU
per request is the sum over the replicas (what the discount side costs per
listing, comparable with shared), peak RSS is the largest of the three (one
process, comparable with the other rows); results.json has each replica's
own figures under "discount_replicas". Results go to stdout as a Markdown
table and to target/bench/ as results.md, results.json and latency.svg.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # no scripts/__pycache__ left in the work tree
import bench_data  # noqa: E402
from services import start_catalog, start_discount  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# What a correct answer contains: the plain list ends with product 3's price,
# the discounted one with product 3's discount.
PLAIN_END = '"price_in_cents":32999}]'
DISCOUNTED_END = '"value_in_cents":29699}}]'

WRK_CHECK = """
-- Counts answers that are not 200 or lack the expected text (bad), and,
-- with BENCH_STATUS=1, listings whose X-Discount-Status is not "applied"
-- (not_applied). BENCH_ALSO is a second text accepted in a listing that is
-- not "applied" (kill3: the undiscounted list).
local expected = os.getenv("BENCH_EXPECT") or ""
local also = os.getenv("BENCH_ALSO")
local check_status = os.getenv("BENCH_STATUS") == "1"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; not_applied = 0 end
-- wrk passes header names as they came: hyper sends them in lower case.
local function discount_status(headers)
  local value = headers["x-discount-status"]
  if value then return value end
  for name, v in pairs(headers) do
    if string.lower(name) == "x-discount-status" then return v end
  end
  return nil
end
function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    return
  end
  local ok = string.find(body, expected, 1, true)
  if check_status and discount_status(headers) ~= "applied" then
    not_applied = not_applied + 1
    if not ok and also then ok = string.find(body, also, 1, true) end
  end
  if not ok then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total, unapplied = 0, 0
  for _, t in ipairs(threads) do
    total = total + t:get("bad")
    unapplied = unapplied + t:get("not_applied")
  end
  io.write(string.format("BENCH_BAD %d\\n", total))
  io.write(string.format("BENCH_NOT_APPLIED %d\\n", unapplied))
  io.write(string.format("BENCH_P %d %d %d %d %d\\n", latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.requests))
  -- Not summary.errors.status (answers >= 400): response() counted those in bad.
  io.write(string.format("BENCH_ERRORS %d\\n", summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
"""


def wrk(url, connections, seconds, expect, user_id, script, cpu, also=None):
    """wrk against `url`; `also` is a body text accepted besides `expect`
    in a listing whose X-Discount-Status is not "applied"."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", script]
    env = {**os.environ, "BENCH_EXPECT": expect}
    if user_id:
        command += ["-H", f"X-USER-ID: {user_id}"]
        env["BENCH_STATUS"] = "1"
    if also:
        env["BENCH_ALSO"] = also
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    run = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60, env=env)
    out = run.stdout
    found = re.search(r"BENCH_P (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not found:
        raise RuntimeError(f"wrk gave no results (exit {run.returncode}):\n{out}{run.stderr}")
    p50, p90, p99, worst, requests = (int(x) for x in found.groups())
    bad = int(re.search(r"BENCH_BAD (\d+)", out).group(1))
    socket_errors = int(re.search(r"BENCH_ERRORS (\d+)", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    result = {"requests": requests, "errors": bad + socket_errors, "rps": rps,
              "p50_ms": p50 / 1000, "p90_ms": p90 / 1000, "p99_ms": p99 / 1000, "max_ms": worst / 1000}
    if user_id:
        result["not_applied"] = int(re.search(r"BENCH_NOT_APPLIED (\d+)", out).group(1))
    return result


def grpc_load(bins, keys, port, concurrency, seconds, cpu):
    command = [f"{bins}/grpc-load", "--addr", f"127.0.0.1:{port}", "--keys", keys,
               "--concurrency", str(concurrency), "--connections", "2", "--duration", f"{seconds}s"]
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return json.loads(out)


REPLICAS = {"replicas3": 3, "kill3": 3}  # discount processes; 1 for the others


def scrape_every_second(ports, stop, failures):
    """GET /metrics from each of `ports` once a second until `stop`; each
    failed scrape is noted in `failures` (an error of the run)."""
    while not stop.wait(1.0):
        for port in ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                    if answer.status != 200 or b"_build_info" not in answer.read():
                        failures.append(f"port {port}: {answer.status}")
            except OSError as error:
                failures.append(f"port {port}: {error}")


# Appended to WRK_CHECK for the `caller` scenario: each request its own
# trace, marked sampled, as a gateway that traces everything sends it.
WRK_TRACEPARENT = """
local thread_number = 0
function setup(thread)
  table.insert(threads, thread)
  thread_number = thread_number + 1
  thread:set("id", thread_number)
end
local sent = 0
function request()
  sent = sent + 1
  wrk.headers["traceparent"] = string.format("00-%08x%08x%08x%08x-00f067aa0ba902b7-01",
    id, sent, math.random(0, 0x7fffffff), math.random(1, 0x7fffffff))
  return wrk.format()
end
"""

SIGHUPS_PER_SECOND = 10
CA_BUNDLE_SIZE = 10_000


def send_sighups(pid, stop, sent):
    """SIGHUP to `pid` SIGHUPS_PER_SECOND times a second until `stop`."""
    while not stop.wait(1 / SIGHUPS_PER_SECOND):
        os.kill(pid, signal.SIGHUP)
        sent.append(1)


def reloads(metrics_port):
    """catalog_reloads_total by outcome, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = re.findall(r'^catalog_reloads_total\{outcome="(\w+)"\} (\d+)', text, re.MULTILINE)
    return {outcome: int(count) for outcome, count in found}


MILLION = ("million", "million1")
LOAD_TIMEOUT = 600  # seconds for a catalog to load the million products


def wait_until_ready(catalog):
    """Seconds from the catalog's start until its /readyz answers 200."""
    deadline = time.monotonic() + LOAD_TIMEOUT
    while time.monotonic() < deadline:
        if catalog.process.poll() is not None:
            raise RuntimeError(f"the catalog exited while loading:\n{''.join(catalog.log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{catalog.port}/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return round(time.monotonic() - catalog.started, 2)
        except OSError:  # 503 until loaded
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the catalog was not ready within {LOAD_TIMEOUT} s:\n{''.join(catalog.log)}")


def run_scenario(name, connections, args, bin_dir, keys, script):
    services_cpu = "0" if args.pin else None
    load_cpu = "1" if args.pin else None
    discounts, catalog, killer, scraper, sink, hangups = [], None, None, None, None, None
    scraping, scrape_failures, sighups = threading.Event(), [], []
    try:
        scraped = name in ("observed", "traced", "caller")
        # sighup: metrics on to read the reloads at the end, not scraped during the run.
        observed = ["--metrics-addr", "127.0.0.1:0"] if scraped or name == "sighup" else []
        env = None
        if name in ("traced", "caller"):
            sink = subprocess.Popen([f"{bin_dir}/otlp-sink"], stdout=subprocess.PIPE, text=True)
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.stdout.readline().strip()}
        if name == "traced":
            env["MAX_TRACES_PER_SECOND"] = "1000000"
        if name == "caller":
            env.update({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"})
            script = f"{script}.caller.lua"
        for _ in range(REPLICAS.get(name, 1)):
            discounts.append(start_discount(bin_dir, keys, observed, cpu=services_cpu, env=env))
        if name == "grpc":
            port = discounts[0].port
            drive = lambda seconds: grpc_load(bin_dir, keys, port, connections, seconds, load_cpu)
        else:
            extra = ["--max-connections", "4096", *observed]
            if args.discount_deadline:
                extra += ["--discount-deadline", args.discount_deadline]
            if name == "dial":
                extra.append("--dial-per-request")
            if name in MILLION:
                extra += ["--database-url", args.postgres.url]
            if len(discounts) > 1:
                # One name for the whole list; the bench certificate is
                # issued to DNS:localhost (and IP 127.0.0.1, ::1).
                extra += ["--discount-server-name", "localhost"]
            # sighup: the catalog trusts the large bundle, discount its usual CA.
            catalog_keys = f"{keys}-bundle" if name == "sighup" else keys
            # The seed's data in a file of the run's own (a catalog before
            # issue 27 has no database and ignores the variable).
            catalog_env = {**(env or {}), "CATALOG_DATABASE_URL": f"sqlite://{args.work}/catalog.db"}
            catalog = start_catalog(bin_dir, catalog_keys, [d.port for d in discounts], extra,
                                    cpu=services_cpu, env=catalog_env)
            loaded_s = wait_until_ready(catalog)
            url = f"http://127.0.0.1:{catalog.port}/products"
            user, expect = {"ceiling": (None, PLAIN_END), "million": (None, bench_data.PAGE_PLAIN_END),
                            "million1": ("1", bench_data.PAGE_DISCOUNTED_END)}.get(name, ("1", DISCOUNTED_END))
            # A listing priced while a replica dies may rightly go out
            # undiscounted (X-Discount-Status not "applied"): not an error.
            also = PLAIN_END if name == "kill3" else None
            drive = lambda seconds: wrk(url, connections, seconds, expect, user, script, load_cpu, also)
        warm = drive(args.warmup) if args.warmup else {"requests": 0}  # connections, caches, allocator settle
        everyone = [*discounts, *([catalog] if catalog else [])]
        before = [s.cpu_seconds() for s in everyone]
        if name == "kill3":
            victim, killed = discounts[0], {}

            def kill():
                killed["at_s"] = round(time.monotonic() - start, 2)
                victim.kill()

            killer = threading.Timer(args.duration / 2, kill)
            start = time.monotonic()
            killer.start()
        if name == "sighup":
            hangups = threading.Thread(target=send_sighups, args=(catalog.process.pid, scraping, sighups))
            hangups.start()
        if scraped:
            targets = [s.metrics_port for s in everyone]
            scraper = threading.Thread(target=scrape_every_second, args=(targets, scraping, scrape_failures))
            scraper.start()
        result = drive(args.duration)
        scraping.set()
        if hangups:
            hangups.join()
            result["sighups"] = len(sighups)
            result["reloads"] = reloads(catalog.metrics_port)
        if scraper:
            scraper.join()
            result["errors"] += len(scrape_failures)
        if killer:
            killer.join()
        used = [s.cpu_seconds() - b for s, b in zip(everyone, before)]
        requests = max(result["requests"], 1)
        per_request = lambda seconds: round(seconds / requests * 1e6, 1)
        result["scenario"], result["connections"] = name, connections
        result["build"] = "baseline" if bin_dir == args.baseline_bin_dir else "this"
        if catalog:
            result["catalog_ready_s"] = loaded_s
        result["peak_rss_mb"] = {"discount": round(max(d.peak_rss_mb() for d in discounts), 1)}
        result["cpu_us_per_request"] = {"discount": per_request(sum(used[:len(discounts)]))}
        if catalog:
            result["peak_rss_mb"]["catalog"] = round(catalog.peak_rss_mb(), 1)
            result["cpu_us_per_request"]["catalog"] = per_request(used[-1])
        if len(discounts) > 1:
            result["discount_replicas"] = [
                {"port": d.port, "peak_rss_mb": round(d.peak_rss_mb(), 1), "cpu_us_per_request": per_request(u),
                 "killed": d.final is not None}
                for d, u in zip(discounts, used)
            ]
        if sink:
            # The services flush their last spans when they stop.
            for service in everyone:
                service.stop()
            sink.terminate()
            result["spans_exported"] = json.loads(sink.communicate(timeout=10)[0].strip().splitlines()[-1])["spans"]
            # The sink counted the warm-up's spans too.
            result["listings_while_exporting"] = warm["requests"] + result["requests"]
            sink = None
        if name == "kill3":
            if victim.final is None:
                raise RuntimeError(f"kill3: the replica on port {victim.port} was not killed during the run "
                                   f"(exit status {victim.process.returncode})")
            result["killed"] = {"port": victim.port, "at_s": killed["at_s"]}
        return result
    finally:
        if killer:
            killer.cancel()
            killer.join()
        scraping.set()
        if hangups:
            hangups.join()
        if scraper:
            scraper.join()
        if sink:
            sink.kill()
            sink.wait()
        for service in [*([catalog] if catalog else []), *discounts]:
            service.stop()


LABELS = {
    "ceiling": "1 catalog, no user (HTTP-only ceiling)",
    "shared": "2 catalog, X-USER-ID 1, shared channel",
    "dial": "3 catalog, X-USER-ID 1, --dial-per-request",
    "grpc": "4 discount ApplyDiscount over mTLS",
    "replicas3": "5 catalog, X-USER-ID 1, 3 discount replicas",
    "kill3": "6 the same, 1 of 3 replicas SIGKILLed mid-run",
    "observed": "7 as 2, metrics on and scraped every second",
    "traced": "8 as 7, spans exported over OTLP",
    "sighup": "9 as 2, 10,000-CA --discount-ca, 10 SIGHUPs/s",
    "caller": "10 as 8, default cap, 1% sampler, every request sampled by its caller",
    "million": "11 catalog, 1M products in PostgreSQL (10k with --quick), page of 100",
    "million1": "12 as 11, X-USER-ID 1 (ApplyDiscounts per page)",
}
SCENARIOS = tuple(LABELS)


def errors_cell(r):
    """Errors, and in kill3 (or wherever there are any) the listings whose
    discount was not applied."""
    cell = str(r["errors"])
    if r.get("not_applied") or (r["scenario"] == "kill3" and "not_applied" in r):
        cell += f" ({r['not_applied']} not applied)"
    return cell


def markdown(results, ratios, args):
    lines = [
        f"{args.duration} s per run after {args.warmup} s warm-up; wrk -t2 (HTTP) and grpc-load over 2 connections (gRPC); "
        + ("services pinned to CPU 0, load to CPU 1" if args.pin else "load and services share both cores"),
        "",
        "| scenario | conns | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | peak RSS MB (discount / catalog) | CPU µs/req (discount / catalog) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        rss, cpu = r["peak_rss_mb"], r["cpu_us_per_request"]
        label = LABELS[r["scenario"]] + (f" ({args.baseline_name})" if r["build"] == "baseline" else "")
        lines.append(
            f"| {label} | {r['connections']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['max_ms']:.1f} | {errors_cell(r)} | {rss.get('discount', 0)} / {rss.get('catalog', '-')} | "
            f"{cpu.get('discount', 0)} / {cpu.get('catalog', '-')} |"
        )
    if any(r["scenario"] in REPLICAS for r in results):
        lines += ["", "Rows 5 and 6: discount CPU µs/req is the sum over the three replicas, peak RSS the largest of them."]
    for r in results:
        if "spans_exported" in r:
            lines.append(f"\n{LABELS[r['scenario']]} @ {r['connections']}: {r['spans_exported']:,} spans exported "
                         f"for {r['listings_while_exporting']:,} listings (warm-up included)")
        if r["scenario"] in MILLION and r["build"] == "this":
            lines.append(f"\n{LABELS[r['scenario']]} @ {r['connections']}: the catalog loaded "
                         f"its products in {r['catalog_ready_s']} s (start to /readyz 200)")
        if "sighups" in r:
            lines.append(f"\n{LABELS[r['scenario']]} @ {r['connections']}: {r['sighups']} SIGHUPs sent, "
                         f"reloads {r['reloads']}")
    if ratios:
        lines += ["", "| ratio (same run) | conns | value |", "|---|---:|---:|"]
    for r in ratios:
        lines.append(f"| {r['name']} | {r['connections']} | {r['value']:.3f} |")
    return "\n".join(lines) + "\n"


def svg(results):
    """Latency percentiles per scenario, as grouped horizontal bars."""
    rows = [(f"{LABELS[r['scenario']]} @ {r['connections']}", r["p50_ms"], r["p90_ms"], r["p99_ms"]) for r in results]
    top = max((p99 for *_, p99 in rows), default=1) or 1
    width, left, bar, gap = 900, 330, 9, 14
    height = 50 + len(rows) * (3 * bar + gap)
    colours = [("p50", "#4c78a8"), ("p90", "#f58518"), ("p99", "#e45756")]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<text x="10" y="18" font-size="13">Latency percentiles (ms), longest bar = {top:.2f} ms</text>']
    for i, (name, colour) in enumerate(colours):
        out.append(f'<rect x="{left + i * 70}" y="26" width="10" height="10" fill="{colour}"/><text x="{left + i * 70 + 14}" y="35">{name}</text>')
    y = 48
    for label, *values in rows:
        out.append(f'<text x="10" y="{y + 2 * bar}">{label}</text>')
        for i, value in enumerate(values):
            length = (width - left - 80) * value / top
            out.append(f'<rect x="{left}" y="{y + i * bar}" width="{length:.1f}" height="{bar - 1}" fill="{colours[i][1]}"/>')
            out.append(f'<text x="{left + length + 4:.1f}" y="{y + i * bar + bar - 2}" font-size="9">{value:.2f}</text>')
        y += 3 * bar + gap
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", required=True, help="where discount, catalog and grpc-load are")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run (default 10)")
    parser.add_argument("--connections", default="16,64", help="comma-separated connection counts (default 16,64)")
    parser.add_argument("--quick", action="store_true", help="1 s per run, no warm-up: a smoke test, not a measurement")
    parser.add_argument("--pin", action="store_true", help="pin services to CPU 0 and the load generator to CPU 1")
    parser.add_argument("--out", default=str(REPO / "target" / "bench"), help="where to write the results")
    parser.add_argument("--baseline-bin-dir", help="binaries of another build to interleave with these")
    parser.add_argument("--baseline-name", default="baseline", help="what to call them in the table")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each scenario and count (default 1)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})")
    args = parser.parse_args()
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        parser.error(f"--scenarios: unknown {','.join(unknown) or '(none given)'}; choose from {','.join(SCENARIOS)}")
    names = [n for n in SCENARIOS if n in names]  # table order
    args.warmup = 0 if args.quick else 1
    # A measurement runs with the catalog's default deadline, as in
    # production. The quick smoke (a debug build in CI, sharing two cores
    # with everything else) only checks that every answer is right, so a TLS
    # handshake slowed past the deadline must not count as a wrong answer.
    args.discount_deadline = "5s" if args.quick else None
    if args.quick:
        args.duration = 1

    counts = [int(c) for c in args.connections.split(",")]
    builds = [b for b in (args.baseline_bin_dir, args.bin_dir) if b]
    results, loaded = [], None
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as cleanup:
        args.work = work
        keys = f"{work}/keys"
        subprocess.run(["bash", str(REPO / "scripts" / "gen-keys.sh"), "--dir", keys], check=True, capture_output=True)
        script = f"{work}/check.lua"
        Path(script).write_text(WRK_CHECK)
        Path(f"{script}.caller.lua").write_text(WRK_CHECK + WRK_TRACEPARENT)
        if "sighup" in names:
            # The catalog's keys with ca.pem made a bundle of CA_BUNDLE_SIZE
            # certificates, the real CA first.
            shutil.copytree(keys, f"{keys}-bundle")
            with open(f"{keys}-bundle/ca.pem", "wb") as bundle:
                subprocess.run([f"{args.bin_dir}/ca-bundle", str(CA_BUNDLE_SIZE - 1), f"{keys}/ca.pem"],
                               stdout=bundle, check=True)
        if any(name in MILLION for name in names):
            count = 10_000 if args.quick else bench_data.PRODUCTS
            print(f"bench: a PostgreSQL cluster with {count:,} products ...", file=sys.stderr, flush=True)
            args.postgres = cleanup.enter_context(bench_data.Postgres())
            loaded = bench_data.load(builds[-1], args.postgres, work, count)
        # A catalog from before issue 27 has no database to hold a million.
        stored = {b: "--database-url" in subprocess.run([f"{b}/catalog", "--help"], capture_output=True,
                                                         text=True).stdout for b in builds}
        for name in names:
            for connections in counts:
                for round_ in range(args.rounds):
                    for bin_dir in builds:
                        if name in MILLION and not stored[bin_dir]:
                            print(f"bench: {name}: {bin_dir}/catalog has no --database-url; not run there",
                                  file=sys.stderr)
                            continue
                        which = "" if len(builds) == 1 else f" ({'baseline' if bin_dir == args.baseline_bin_dir else 'this'})"
                        print(f"bench: {name} at {connections} connections{which}, round {round_ + 1} ...",
                              file=sys.stderr, flush=True)
                        results.append(run_scenario(name, connections, args, bin_dir, keys, script))

    ratios = ratios_of(results, counts)
    table = markdown(results, ratios, args)
    if loaded:
        table += (f"\n{loaded['products']:,} products imported into PostgreSQL with `catalog import` "
                  f"in {loaded['import_s']} s\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"results": results, "ratios": ratios, "import": loaded}, indent=2) + "\n")
    (out / "latency.svg").write_text(svg(results))
    print(table)
    print(f"bench: wrote {out}/results.md, results.json and latency.svg", file=sys.stderr)
    errors = sum(r["errors"] for r in results)
    if errors:
        print(f"bench: {errors} errors: some answers were wrong or missing", file=sys.stderr)
    return 1 if errors else 0


def ratios_of(results, counts):
    """Requests per second of one scenario over another, and of this build
    over the baseline, each from the mean over the rounds."""
    def mean_rps(scenario, connections, build):
        rps = [r["rps"] for r in results
               if (r["scenario"], r["connections"], r["build"]) == (scenario, connections, build)]
        return sum(rps) / len(rps) if rps else None

    ratios = []
    for c in counts:
        for scenario in LABELS:
            this, base = mean_rps(scenario, c, "this"), mean_rps(scenario, c, "baseline")
            if this and base:
                ratios.append({"name": f"{LABELS[scenario]}: this build / baseline", "connections": c,
                               "value": this / base})
        for top, bottom, name in (("shared", "ceiling", "(2)/(1) discount path vs HTTP-only ceiling"),
                                  ("shared", "dial", "(2)/(3) shared channel vs dial per request"),
                                  ("replicas3", "shared", "(5)/(2) three discount replicas vs one"),
                                  ("observed", "shared", "(7)/(2) metrics on and scraped vs off"),
                                  ("traced", "shared", "(8)/(2) metrics and traces exported vs off"),
                                  ("sighup", "shared", "(9)/(2) 10 SIGHUPs/s with a 10,000-CA bundle vs none")):
            top_rps, bottom_rps = mean_rps(top, c, "this"), mean_rps(bottom, c, "this")
            if top_rps and bottom_rps:
                ratios.append({"name": name, "connections": c, "value": top_rps / bottom_rps})
    return ratios


if __name__ == "__main__":
    sys.exit(main())
