"""Benchmarks the catalog and discount on this machine; see scripts/bench.sh.

Scenarios, each at every connection count (default 16 and 64):
  1. ceiling   catalog GET /products, no X-USER-ID: the HTTP-only path
  2. shared    catalog GET /products, X-USER-ID: 1, one shared channel (default)
  3. dial      the same with --dial-per-request (the seed's connection model)
  4. grpc      discount ApplyDiscount directly over mutual TLS (grpc-load)

Services are started afresh for each run (so peak RSS is per scenario), on
127.0.0.1 with ports the OS picks, logging at warn. HTTP load comes from wrk,
gRPC load from our grpc-load; every answer is checked, and anything but a
200 with the expected body counts as an error. Results go to stdout as a
Markdown table and to target/bench/ as results.md, results.json and
latency.svg.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from services import start_catalog, start_discount

REPO = Path(__file__).resolve().parent.parent

# What a correct answer contains: the plain list ends with product 3's price,
# the discounted one with product 3's discount.
PLAIN_END = '"price_in_cents":32999}]'
DISCOUNTED_END = '"value_in_cents":29699}}]'

WRK_CHECK = """
-- Counts answers that are not 200 or lack the expected text.
local expected = os.getenv("BENCH_EXPECT") or ""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, expected, 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("BENCH_BAD %d\\n", total))
  io.write(string.format("BENCH_P %d %d %d %d %d\\n", latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.requests))
  io.write(string.format("BENCH_ERRORS %d\\n", summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.status + summary.errors.timeout))
end
"""


def wrk(url, connections, seconds, expect, user_id, script, cpu):
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", script]
    if user_id:
        command += ["-H", f"X-USER-ID: {user_id}"]
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    run = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60,
                         env={**os.environ, "BENCH_EXPECT": expect})
    out = run.stdout
    found = re.search(r"BENCH_P (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not found:
        raise RuntimeError(f"wrk gave no results (exit {run.returncode}):\n{out}{run.stderr}")
    p50, p90, p99, worst, requests = (int(x) for x in found.groups())
    bad = int(re.search(r"BENCH_BAD (\d+)", out).group(1))
    socket_errors = int(re.search(r"BENCH_ERRORS (\d+)", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"requests": requests, "errors": bad + socket_errors, "rps": rps,
            "p50_ms": p50 / 1000, "p90_ms": p90 / 1000, "p99_ms": p99 / 1000, "max_ms": worst / 1000}


def grpc_load(bins, keys, port, concurrency, seconds, cpu):
    command = [f"{bins}/grpc-load", "--addr", f"127.0.0.1:{port}", "--keys", keys,
               "--concurrency", str(concurrency), "--connections", "2", "--duration", f"{seconds}s"]
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return json.loads(out)


def run_scenario(name, connections, args, keys, script):
    services_cpu = "0" if args.pin else None
    load_cpu = "1" if args.pin else None
    discount = start_discount(args.bin_dir, keys, cpu=services_cpu)
    services = {"discount": discount}
    try:
        if name == "grpc":
            drive = lambda seconds: grpc_load(args.bin_dir, keys, discount.port, connections, seconds, load_cpu)
        else:
            extra = ["--max-connections", "4096"]
            if args.discount_deadline:
                extra += ["--discount-deadline", args.discount_deadline]
            if name == "dial":
                extra.append("--dial-per-request")
            catalog = start_catalog(args.bin_dir, keys, discount.port, extra, cpu=services_cpu)
            services["catalog"] = catalog
            url = f"http://127.0.0.1:{catalog.port}/products"
            user, expect = (None, PLAIN_END) if name == "ceiling" else ("1", DISCOUNTED_END)
            drive = lambda seconds: wrk(url, connections, seconds, expect, user, script, load_cpu)
        if args.warmup:
            drive(args.warmup)  # connections, caches and the allocator settle
        before = {k: s.cpu_seconds() for k, s in services.items()}
        result = drive(args.duration)
        after = {k: s.cpu_seconds() for k, s in services.items()}
        result["scenario"], result["connections"] = name, connections
        result["peak_rss_mb"] = {k: round(s.peak_rss_mb(), 1) for k, s in services.items()}
        result["cpu_us_per_request"] = {
            k: round((after[k] - before[k]) / max(result["requests"], 1) * 1e6, 1) for k in services
        }
        return result
    finally:
        for service in services.values():
            service.stop()


LABELS = {
    "ceiling": "1 catalog, no user (HTTP-only ceiling)",
    "shared": "2 catalog, X-USER-ID 1, shared channel",
    "dial": "3 catalog, X-USER-ID 1, --dial-per-request",
    "grpc": "4 discount ApplyDiscount over mTLS",
}


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
        lines.append(
            f"| {LABELS[r['scenario']]} | {r['connections']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['errors']} | {rss.get('discount', 0)} / {rss.get('catalog', '-')} | "
            f"{cpu.get('discount', 0)} / {cpu.get('catalog', '-')} |"
        )
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
    args = parser.parse_args()
    args.warmup = 0 if args.quick else 1
    # A measurement runs with the catalog's default deadline, as in
    # production. The quick smoke (a debug build in CI, sharing two cores
    # with everything else) only checks that every answer is right, so a TLS
    # handshake slowed past the deadline must not count as a wrong answer.
    args.discount_deadline = "5s" if args.quick else None
    if args.quick:
        args.duration = 1

    counts = [int(c) for c in args.connections.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as work:
        keys = f"{work}/keys"
        subprocess.run(["bash", str(REPO / "scripts" / "gen-keys.sh"), "--dir", keys], check=True, capture_output=True)
        script = f"{work}/check.lua"
        Path(script).write_text(WRK_CHECK)
        for name in ("ceiling", "shared", "dial", "grpc"):
            for connections in counts:
                print(f"bench: {name} at {connections} connections ...", file=sys.stderr, flush=True)
                results.append(run_scenario(name, connections, args, keys, script))

    by = {(r["scenario"], r["connections"]): r for r in results}
    ratios = []
    for c in counts:
        ratios.append({"name": "(2)/(1) discount path vs HTTP-only ceiling", "connections": c,
                       "value": by[("shared", c)]["rps"] / by[("ceiling", c)]["rps"]})
        ratios.append({"name": "(2)/(3) shared channel vs dial per request", "connections": c,
                       "value": by[("shared", c)]["rps"] / by[("dial", c)]["rps"]})

    table = markdown(results, ratios, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"results": results, "ratios": ratios}, indent=2) + "\n")
    (out / "latency.svg").write_text(svg(results))
    print(table)
    print(f"bench: wrote {out}/results.md, results.json and latency.svg", file=sys.stderr)
    errors = sum(r["errors"] for r in results)
    if errors:
        print(f"bench: {errors} errors: some answers were wrong or missing", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
