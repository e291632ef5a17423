"""The million-product data set of scripts/bench.py's `million` and
`million1` scenarios (issue 27): a throw-away PostgreSQL cluster, made and
started here and removed at the end, holding 1,000,000 generated products
(10,000 in a --quick smoke) and customer 1, put there with `catalog import`
as an operator would.

Product i has slug product-i, description "Product number i" and a price
of 100 * (i % 10000 + 1) cents, so the first page of 100 ends with product
100 at 10100 cents, 9090 after customer 1's 10%.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PRODUCTS = 1_000_000

# What the first page of 100 ends with, plain and for customer 1.
PAGE_PLAIN_END = '"price_in_cents":10100}]'
PAGE_DISCOUNTED_END = '"value_in_cents":9090}}]'


def price(i):
    return 100 * (i % 10000 + 1)


def write_products(path, count=PRODUCTS):
    with open(path, "w") as out:
        out.write("id,slug,description,price_in_cents\n")
        out.writelines(f"{i},product-{i},Product number {i},{price(i)}\n" for i in range(1, count + 1))


class Postgres:
    """A PostgreSQL cluster in a temporary directory, on a free loopback
    port, trusting loopback; run as the `postgres` user when we are root
    (PostgreSQL refuses to run as root). Use it as a context manager: the
    server is stopped and its directory removed on exit."""

    def __init__(self):
        self.bin = newest_postgres()
        self.dir = tempfile.mkdtemp(prefix="bench-postgres-")
        self.user = "postgres" if os.geteuid() == 0 else None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self.started = False

    def __enter__(self):
        try:
            if self.user:
                subprocess.run(["chown", self.user, self.dir], check=True)
            data = f"{self.dir}/data"
            self._pg("initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
            # Durability off: the cluster is thrown away, and the benchmark
            # measures the catalog serving from memory, not PostgreSQL's disk.
            options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            self._pg("pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", f"{self.dir}/server.log", "-o", options)
            self.started = True
            return self
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc):
        if self.started:
            self._pg("pg_ctl", "stop", "-w", "-m", "immediate", "-D", f"{self.dir}/data", check=False)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def _pg(self, tool, *args, check=True):
        command = [f"{self.bin}/{tool}", *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        run = subprocess.run(command, cwd=self.dir, capture_output=True, text=True)
        if check and run.returncode != 0:
            raise RuntimeError(f"{tool} failed (exit {run.returncode}):\n{run.stdout}{run.stderr}")


def newest_postgres():
    """Debian's /usr/lib/postgresql/N/bin with the highest N."""
    found = sorted((int(p.name), p / "bin") for p in Path("/usr/lib/postgresql").glob("*")
                   if p.name.isdigit() and (p / "bin/initdb").exists())
    if not found:
        raise RuntimeError("bench: the million scenarios need PostgreSQL (Debian: apt-get install postgresql)")
    return found[-1][1]


def load(bin_dir, postgres, work, count=PRODUCTS):
    """Imports `count` products and customer 1 into `postgres` with the
    catalog's own command; returns the import's figures."""
    products = f"{work}/products.csv"
    write_products(products, count)
    customers = f"{work}/customers.csv"
    Path(customers).write_text("id,first_name,last_name\n1,Bench,Customer\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "warn"}
    started = time.monotonic()
    for kind, path in (("products", products), ("customers", customers)):
        run = subprocess.run([f"{bin_dir}/catalog", "import", kind, path, "--database-url", postgres.url],
                             capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"catalog import {kind} failed (exit {run.returncode}):\n{run.stdout}{run.stderr}")
    return {"products": count, "import_s": round(time.monotonic() - started, 1)}
