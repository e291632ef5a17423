#!/usr/bin/env python3
"""Instructions per listing, counted by valgrind's callgrind: a figure the
machine's load does not move, so a change to the request path can be
compared with the commit before it, however noisy the machine.

    scripts/callgrind.py --bin-dir target/release [--bin-dir OTHER/target/release ...] [--top N]

For each binary directory, and for each side (the catalog on the discount
path, `X-USER-ID: 1`; the catalog on the plain path, no header; discount
on the discount path), it runs that service under callgrind and the other
natively, sends SHORT and then LONG listings one after another on one
keep-alive connection, and divides the difference of the two runs'
instruction totals by LONG - SHORT, so start-up and shutdown cancel out.
Each listing's answer is checked (200, and `X-Discount-Status: applied` on
the discount path): a count over failed requests would be no figure.

With --top N it also prints, for each side, the N functions costing the
most per listing counted inclusively (a function with all it calls), from
callgrind_annotate --inclusive=yes on both runs, their difference divided
the same way: where the instructions go.

Needs valgrind (Debian: apt-get install valgrind) and release binaries
built with the default profile (line tables only, so function names show
in callgrind_annotate).
"""

import argparse
import glob
import http.client
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import services  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHORT, LONG = 300, 1300
# valgrind starts a release binary in a few seconds, and writes its counts
# at exit; on a busy machine, give both more than services.py's default.
services.TIMEOUT = 60


def valgrind(out_file):
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", "--quiet"]


def start(binary, args, under_callgrind, out_file, env=None):
    prefix = valgrind(out_file) if under_callgrind else []
    # The binary's default log filter: its access lines are part of the
    # request path as shipped.
    return services.Service([*prefix, binary, *args], log_level=None, env=env)


def listings(port, count, user_id):
    """`count` GET /products on one keep-alive connection, each checked."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"X-USER-ID": user_id} if user_id else {}
    for i in range(count):
        connection.request("GET", "/products", headers=headers)
        answer = connection.getresponse()
        body = answer.read()
        status = answer.getheader("X-Discount-Status")
        if answer.status != 200 or (user_id and status != "applied") or body.count(b'"id"') != 3:
            raise RuntimeError(f"listing {i}: {answer.status} {status} {body[:200]!r}")
    connection.close()


def total_instructions(out_file):
    """The Ir total callgrind wrote (summed over every thread's file)."""
    total = 0
    for path in glob.glob(out_file + "*"):
        with open(path) as f:
            for line in f:
                if line.startswith("totals:") or line.startswith("summary:"):
                    total += int(line.split()[1])
                    break
    if total == 0:
        raise RuntimeError(f"no callgrind totals in {out_file}*")
    return total


def inclusive(out_file):
    """{function: instructions, itself and all it calls} in one run, from
    callgrind_annotate (one file: callgrind writes one per process)."""
    files = sorted(glob.glob(out_file + "*"))
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no",
                           "--show-percs=no", files[0]],
                          capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in text.splitlines():
        # "  1,234,567  file.rs:crate::module::function [/path/to/binary]"
        found = re.match(r"\s*([\d,]+)\s+(?:[^ :]*:)?(.+?)(?: \[[^\]]*\])?$", line)
        if found and not found.group(2).startswith(("PROGRAM TOTALS", "file:function", "Ir")):
            name = found.group(2)
            costs[name] = costs.get(name, 0) + int(found.group(1).replace(",", ""))
    return costs


# Frames every task's poll passes through (the runtime, thread start-up,
# future adapters and pins): their inclusive cost is the whole side's, so
# they say nothing of where it goes.
PLUMBING = ("tokio::runtime::", "std::sys::", "core::ops::function::", "start_thread", "clone3",
            "<core::pin::Pin<", "<core::future::", "<futures_util::future::", "<tower::util::oneshot::",
            "<axum::util::MapIntoResponseFuture", "tokio::task::", "<tokio::runtime::")


def top(short, long, count, total):
    """The `count` functions costing the most per listing, inclusively,
    plumbing left out, and the frames of a recursion cycle (callgrind
    names them `'2`, and counts them more than once)."""
    per = {name: (cost - short.get(name, 0)) / (LONG - SHORT) for name, cost in long.items()
           if not name.startswith(PLUMBING) and "'" not in name}
    meaningful = [(name, cost) for name, cost in per.items() if cost < total]
    return sorted(meaningful, key=lambda item: -item[1])[:count]


def run(bin_dir, keys, side, count, work, costs=None):
    """Total instructions of the measured service for `count` listings;
    with `costs` (a dict), its inclusive cost by function put there."""
    out_file = f"{work}/{side}-{count}.out"
    discount_args = ["--listen-addr", "127.0.0.1", "--cert", f"{keys}/cert.pem",
                     "--key", f"{keys}/private.key", "--client-ca", f"{keys}/ca.pem", "0"]
    discount = start(f"{bin_dir}/discount", discount_args, side == "discount", out_file)
    try:
        catalog_args = ["--listen-addr", "127.0.0.1", "--discount-host", f"127.0.0.1:{discount.port}",
                        "--discount-server-name", "localhost", "--discount-ca", f"{keys}/ca.pem",
                        "--client-cert", f"{keys}/client.pem", "--client-key", f"{keys}/client.key",
                        # callgrind slows the measured side some 50 times:
                        # no deadline, health check or keepalive ping may
                        # take that for a failure.
                        "--discount-deadline", "30s", "--request-timeout", "60s",
                        "--discount-health-interval", "30s", "--discount-connect-timeout", "30s", "0"]
        # The seed's data in a file of the run's own; the check for new data
        # (every 500 ms by default) off, since it counts per second, not per
        # listing. A catalog before issue 27 ignores both.
        data = {"CATALOG_DATABASE_URL": f"sqlite://{work}/catalog.db", "CATALOG_DATA_REFRESH_INTERVAL": "1h"}
        catalog = start(f"{bin_dir}/catalog", catalog_args, side.startswith("catalog"), out_file, data)
        try:
            listings(catalog.port, count, None if side == "catalog-plain" else "1")
        except RuntimeError as error:
            raise RuntimeError(f"{side}: {error}\ncatalog's log:\n{''.join(catalog.log[-20:])}"
                               f"discount's log:\n{''.join(discount.log[-20:])}") from None
        finally:
            catalog.stop()
    finally:
        discount.stop()
    if costs is not None:
        costs.update(inclusive(out_file))
    return total_instructions(out_file)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", action="append", required=True,
                        help="a directory holding release catalog and discount (repeat to compare)")
    parser.add_argument("--top", type=int, default=0, metavar="N",
                        help="also print each side's N most costly functions per listing, inclusive")
    args = parser.parse_args()
    for tool in ("valgrind", "openssl"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"callgrind: {tool} is not installed")
    with tempfile.TemporaryDirectory() as work:
        keys = f"{work}/keys"
        subprocess.run(["bash", str(REPO / "scripts" / "gen-keys.sh"), "--dir", keys], check=True,
                       capture_output=True)
        print(f"instructions per listing ({LONG} - {SHORT} listings, one keep-alive client)")
        print("| binaries | catalog, discount path | discount | both | catalog, plain path |")
        print("|---|---|---|---|---|")
        tops = []
        for bin_dir in args.bin_dir:
            per = {}
            for side in ("catalog", "discount", "catalog-plain"):
                started = time.monotonic()
                costs = ({}, {}) if args.top else (None, None)
                short = run(bin_dir, keys, side, SHORT, work, costs[0])
                long = run(bin_dir, keys, side, LONG, work, costs[1])
                per[side] = (long - short) / (LONG - SHORT)
                if args.top:
                    tops.append((bin_dir, side, per[side], top(*costs, args.top, per[side])))
                print(f"  {bin_dir} {side}: {per[side]:,.0f} ({time.monotonic() - started:.0f} s)",
                      file=sys.stderr)
            print(f"| {bin_dir} | {per['catalog']:,.0f} | {per['discount']:,.0f} | "
                  f"{per['catalog'] + per['discount']:,.0f} | {per['catalog-plain']:,.0f} |")
        for bin_dir, side, total, functions in tops:
            print(f"\n{bin_dir}, {side}: instructions per listing, inclusive (of {total:,.0f})")
            print("| function | per listing | share |")
            print("|---|---|---|")
            for name, cost in functions:
                shown = name if len(name) <= 110 else name[:107] + "..."
                print(f"| `{shown}` | {cost:,.0f} | {cost / total:.0%} |")


if __name__ == "__main__":
    main()
