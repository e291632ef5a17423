#!/usr/bin/env python3
"""System calls per listing, counted by strace, for each service: what
callgrind's instruction counts leave out (the kernel's share: writes,
wake-ups, polls).

    python3 scripts/syscalls.py --bin-dir target/release [--listings 2000]

Starts discount and the catalog natively on 127.0.0.1 (throw-away keys,
the seed's data in a temporary SQLite file, the binaries' default log
filter, so the access log's writes count as shipped), warms one
keep-alive connection up, attaches `strace -c -f` to both, sends the
listings one after another on that connection (each checked: 200, and
`X-Discount-Status: applied` on the discount path), detaches, and prints
each service's system calls per listing, the commonest first. The
discount path (`X-USER-ID: 1`) and the plain path, in turn. Needs strace
(Debian: apt-get install strace).
"""

import argparse
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
ROW = re.compile(r"^\s*[0-9.]+\s+[0-9.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def listings(port, count, user_id):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"X-USER-ID": user_id} if user_id else {}
    for i in range(count):
        connection.request("GET", "/products", headers=headers)
        answer = connection.getresponse()
        answer.read()
        status = answer.getheader("X-Discount-Status")
        if answer.status != 200 or (user_id and status != "applied"):
            raise RuntimeError(f"listing {i}: {answer.status} {status}")
    return connection


def counted(path):
    """{syscall: calls} from an `strace -c` summary."""
    calls = {}
    for line in Path(path).read_text().splitlines():
        match = ROW.match(line)
        if match and match.group(2) != "total":
            calls[match.group(2)] = int(match.group(1))
    return calls


def measure(bin_dir, work, keys, count, user_id):
    discount = services.Service(
        [f"{bin_dir}/discount", "--listen-addr", "127.0.0.1", "--cert", f"{keys}/cert.pem",
         "--key", f"{keys}/private.key", "--client-ca", f"{keys}/ca.pem", "0"], log_level=None)
    try:
        catalog = services.Service(
            [f"{bin_dir}/catalog", "--listen-addr", "127.0.0.1", "--discount-host",
             f"127.0.0.1:{discount.port}", "--discount-server-name", "localhost",
             "--discount-ca", f"{keys}/ca.pem", "--client-cert", f"{keys}/client.pem",
             "--client-key", f"{keys}/client.key", "0"],
            log_level=None,
            env={"CATALOG_DATABASE_URL": f"sqlite://{work}/catalog.db",
                 "CATALOG_DATA_REFRESH_INTERVAL": "1h"})
        try:
            listings(catalog.port, 50, user_id)  # connections made, caches warm
            tracers = []
            for name, service in (("catalog", catalog), ("discount", discount)):
                out = f"{work}/{name}.strace"
                tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(service.process.pid)],
                                          stderr=subprocess.PIPE, text=True)
                tracers.append((name, tracer, out))
            # strace says when it has attached ("Process N attached with M
            # threads").
            for _, tracer, _ in tracers:
                for line in tracer.stderr:
                    if "attached" in line:
                        break
            time.sleep(0.5)
            listings(catalog.port, count, user_id).close()
            time.sleep(0.5)
            results = {}
            for name, tracer, out in tracers:
                tracer.terminate()
                tracer.wait(timeout=30)
                results[name] = counted(out)
            return results
        finally:
            catalog.stop()
    finally:
        discount.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", required=True, help="a directory holding release catalog and discount")
    parser.add_argument("--listings", type=int, default=2000)
    args = parser.parse_args()
    for tool in ("strace", "openssl"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"syscalls: {tool} is not installed")
    with tempfile.TemporaryDirectory() as work:
        keys = f"{work}/keys"
        subprocess.run(["bash", str(REPO / "scripts" / "gen-keys.sh"), "--dir", keys], check=True,
                       capture_output=True)
        print(f"system calls per listing ({args.listings} listings, one keep-alive client)")
        for path, user_id in (("discount path", "1"), ("plain path", None)):
            results = measure(args.bin_dir, work, keys, args.listings, user_id)
            both = 0.0
            for name, calls in results.items():
                per = {call: n / args.listings for call, n in calls.items()}
                total = sum(per.values())
                both += total
                top = ", ".join(f"{call} {n:.2f}" for call, n in sorted(per.items(), key=lambda kv: -kv[1])[:6])
                print(f"  {path}, {name}: {total:.1f} ({top})")
            print(f"  {path}, both: {both:.1f}")


if __name__ == "__main__":
    main()
