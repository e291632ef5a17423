"""The Compose stack under faults: what deploy/test.sh runs once the images
are built.

    python3 deploy/test.py

Brings deploy/compose.yaml up under a throw-away project name with keys made
for the run, through deploy/up.sh (docs/deploy.md's quick start), then checks
the golden bodies, that calls spread over the three discount replicas, and
what a steady load sees while one replica is killed, frozen, cut off the
network, and while all three are restarted one by one; then a catalog's
restart and its kill, PostgreSQL's restart, certificates renewed in place,
and an import through one catalog that both must serve within 1 s. Prints each figure, ends with "N
passed, M failed", and always takes the stack down (`down -v`), checking
that nothing is left behind.

Traffic goes to HAProxy's port, published on 127.0.0.1, and to the
catalogs' own addresses on the stack's network (to read each one's
/readyz); every wait and the load itself are bounded in time.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(DEPLOY))
from checks import Checks  # noqa: E402
from stacks import (GOLDEN, PRODUCTS, Load, failures, free_port, get, prometheus_value, run, scraped,  # noqa: E402
                    short, summary)

# The product `more.csv` adds, imported through one catalog.
NEW_PRODUCT = 4

class Stack:
    """One Compose project: its name, ports and containers."""

    def __init__(self, keys, data):
        self.project = os.environ.get("ECOMMERCE_TEST_PROJECT", f"ecomtest{os.getpid()}")
        self.port = free_port()
        self.prometheus_port = free_port()
        self.data = data
        self.env = dict(
            os.environ,
            COMPOSE_PROJECT_NAME=self.project,
            ECOMMERCE_KEYS=keys,
            ECOMMERCE_DATA=data,
            CATALOG_HOST_PORT=f"127.0.0.1:{self.port}",
            PROMETHEUS_HOST_PORT=f"127.0.0.1:{self.prometheus_port}",
        )

    def up(self):
        started = time.monotonic()
        subprocess.run([str(DEPLOY / "up.sh")], env=self.env, check=True, timeout=180)
        return time.monotonic() - started

    def down(self):
        return subprocess.run([str(DEPLOY / "up.sh"), "down"], env=self.env,
                              capture_output=True, text=True, timeout=180)

    def containers(self, service):
        out = run("docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}",
                  "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}").stdout
        return sorted(out.split())

    def network(self):
        return f"{self.project}_default"

    def ip(self, container):
        return run("docker", "inspect", "--format",
                   "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container).stdout.strip()

    def readyz(self, catalog):
        """(status, body) of `catalog`'s own /readyz, asked at its address
        on the stack's network rather than through HAProxy, which would
        answer with either catalog's."""
        try:
            status, _, body = get(11080, "/readyz", timeout=2, host=self.ip(catalog))
            return status, body
        except OSError as error:
            return None, str(error)

    def replica_states(self):
        """{ip: state} of each discount replica: "serving" while any
        catalog's /readyz lists it so."""
        states = {}
        for catalog in self.containers("catalog"):
            _, body = self.readyz(catalog)
            for line in body.splitlines()[1:]:
                address, _, state = line.partition(" ")
                ip = address.rsplit(":", 1)[0]
                if states.get(ip) != "serving":
                    states[ip] = state
        return states

    def wait(self, what, condition, timeout):
        """Seconds until `condition()` held (polled every 50 ms), or None."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if condition():
                return time.monotonic() - started
            time.sleep(0.05)
        views = {c: self.readyz(c) for c in self.containers("catalog")}
        print(f"  (gave up waiting {timeout:.0f} s for {what}; /readyz: {views})", flush=True)
        return None

    def all_serving(self, count=3):
        """Every catalog sees `count` discount replicas, all serving."""
        for catalog in self.containers("catalog"):
            status, body = self.readyz(catalog)
            if status != 200 or not body.startswith(f"ready: {count} of {count} "):
                return False
        return True

    def products(self, catalog):
        """The product ids `catalog` lists (none when it does not answer)."""
        try:
            status, _, body = get(11080, "/products", timeout=2, host=self.ip(catalog))
        except OSError:
            return set()
        return {product["id"] for product in json.loads(body)} if status == 200 else set()

    def calls_answered(self, container):
        """ApplyDiscounts calls the replica logged (one INFO line per call)."""
        logs = run("docker", "logs", container)
        return sum(1 for line in (logs.stdout + logs.stderr).splitlines()
                   if "call answered" in line and "ApplyDiscounts" in line)


def fault(checks, stack, load, name, victim, act, undo, settle=4.0):
    """Runs one fault of `victim` under `load`: `act()`, then waits until
    the catalog's /readyz no longer lists the replica as serving, keeps the
    load on for `settle` seconds, then `undo()` and waits until all three
    are serving again. Checks that no request failed and that every
    listing sent after the catalog noticed was applied."""
    ip = stack.ip(victim)
    noticed = lambda: stack.replica_states().get(ip, "gone") != "serving"  # noqa: E731
    back = stack.all_serving
    started = time.monotonic()
    act()
    took = stack.wait(f"the catalog to notice ({name})", noticed, 30)
    noticed_at = time.monotonic()
    # From the moment the fault began, not from when the command returned.
    took = None if took is None else noticed_at - started
    time.sleep(settle)
    ended = time.monotonic()
    undo()
    back_after = stack.wait(f"all three replicas serving again ({name})", back, 60)
    every = load.since(started, ended)
    total, failed, not_applied = summary(every)
    _, _, late = summary(load.since(noticed_at, ended))
    print(f"  {name}: {total} requests in {ended - started:.1f} s, {failed} failed, "
          f"{not_applied} not applied, noticed after "
          f"{'never' if took is None else f'{took:.2f} s'}, {late} not applied after that, "
          f"back in rotation {'never' if back_after is None else f'{back_after:.1f} s'} after the fault ended",
          flush=True)
    checks.check(f"{name}: the catalog noticed", took is not None)
    checks.check(f"{name}: no request failed", failed == 0 and total > 0, f"{failed} of {total}: {failures(every)}")
    checks.check(f"{name}: every listing applied once the catalog noticed", late == 0, f"{late} not applied")
    checks.check(f"{name}: the replica came back", back_after is not None)
    return every


def main():
    checks = Checks()
    keys = tempfile.mkdtemp(prefix="ecommerce-keys-")
    owner = ["--owner", "65532:65532"] if os.geteuid() == 0 else []
    run(str(REPO / "scripts" / "gen-keys.sh"), "--dir", keys, "--dns", "discount", *owner)
    # The seed's files, and one more product to import through a catalog;
    # readable by the containers' user.
    data = tempfile.mkdtemp(prefix="ecommerce-data-")
    for name in ("products.csv", "customers.csv"):
        shutil.copy(DEPLOY / "data" / name, data)
    Path(data, "more.csv").write_text(f"id,slug,description,price_in_cents\n{NEW_PRODUCT},nintendo-switch,Console,29999\n")
    for path in [data, *Path(data).iterdir()]:
        os.chmod(path, 0o755 if Path(path).is_dir() else 0o644)
    stack = Stack(keys, data)
    try:
        port_taken(checks, keys, data)
        exercise(checks, stack)
        database(checks, stack)
    finally:
        leftovers(checks, stack)
        shutil.rmtree(keys, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    return checks.finish()


def port_taken(checks, keys, data):
    """up.sh with CATALOG_HOST_PORT on a port another program holds: it
    fails, names the variable, and leaves nothing of its project."""
    project = f"{os.environ.get('ECOMMERCE_TEST_PROJECT', f'ecomtest{os.getpid()}')}taken"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        env = dict(os.environ, COMPOSE_PROJECT_NAME=project, ECOMMERCE_KEYS=keys, ECOMMERCE_DATA=data,
                   CATALOG_HOST_PORT=f"127.0.0.1:{taken}", PROMETHEUS_HOST_PORT=f"127.0.0.1:{free_port()}")
        done = subprocess.run([str(DEPLOY / "up.sh")], env=env, capture_output=True, text=True, timeout=180)
    label = f"label=com.docker.compose.project={project}"
    left = [name for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"])
            for name in run("docker", *kind, "-q", "--filter", label).stdout.split()]
    said = [line for line in done.stderr.splitlines() if "CATALOG_HOST_PORT" in line]
    print(f"  a taken port: exit {done.returncode}, said {said}, left {left}", flush=True)
    checks.check("a taken port fails up.sh, naming CATALOG_HOST_PORT",
                 done.returncode != 0 and said, done.stderr[-500:])
    checks.check("a taken port leaves nothing half up", not left, str(left))


def exercise(checks, stack):
    took = stack.up()
    print(f"  the stack was up and ready in {took:.1f} s", flush=True)
    discounts = stack.containers("discount")
    checks.check("three discount replicas", len(discounts) == 3, str(discounts))

    for user, (body, status) in GOLDEN.items():
        got = get(stack.port, "/products", user)
        checks.check(f"golden body for X-USER-ID {user or '(none)'}",
                     got == (200, status, body), repr(got)[:300])

    scraped(checks, stack.prometheus_port, {"catalog": 2, "discount": 3})

    before = {c: stack.calls_answered(c) for c in discounts}
    listings = 300
    for _ in range(listings):
        get(stack.port, "/products", "1")
    time.sleep(1)
    spread = {c: stack.calls_answered(c) - before[c] for c in discounts}
    print(f"  {listings} listings, ApplyDiscounts calls by replica: {spread}", flush=True)
    checks.check("every listing was one call to some replica", sum(spread.values()) == listings, str(spread))
    checks.check("calls spread over all three replicas",
                 all(n >= listings // 10 for n in spread.values()), str(spread))

    victim = discounts[0]
    with Load(stack.port) as load:
        time.sleep(1)
        fault(checks, stack, load, "docker kill", victim,
              lambda: run("docker", "kill", victim), lambda: run("docker", "start", victim))
        fault(checks, stack, load, "docker pause", victim,
              lambda: run("docker", "pause", victim), lambda: run("docker", "unpause", victim))
        calls_before = stack.calls_answered(victim)
        fault(checks, stack, load, "docker network disconnect", victim,
              lambda: run("docker", "network", "disconnect", stack.network(), victim),
              # Back with the service's name, so Docker's DNS lists it again.
              lambda: run("docker", "network", "connect", "--alias", "discount", stack.network(), victim))
        time.sleep(2)
        gained = stack.calls_answered(victim) - calls_before
        checks.check("the reconnected replica gets calls again", gained > 0, f"{gained} calls")

        started = time.monotonic()
        for container in discounts:
            run("docker", "restart", "-t", "15", container)
            stack.wait(f"{container} serving again after its restart", stack.all_serving, 60)
        total, failed, not_applied = summary(load.since(started))
        print(f"  rolling restart of 3 replicas: {total} requests in {time.monotonic() - started:.1f} s, "
              f"{failed} failed, {not_applied} not applied", flush=True)
        checks.check("rolling restart: no request failed", failed == 0 and total > 0, f"{failed} of {total}")
        checks.check("rolling restart: every listing applied", not_applied == 0, f"{not_applied} not applied")

        total, failed, not_applied = summary(load.results)
        print(f"  the whole load: {total} requests, {failed} failed, {not_applied} not applied", flush=True)

    # Peak and current resident memory of each service's process, read
    # from the host's /proc: the figures the Kubernetes requests and limits
    # are set from. Taken after the load; the replicas count from the rolling restart.
    memory = {}
    for container in stack.containers("discount") + stack.containers("catalog"):
        pid = run("docker", "inspect", "--format", "{{.State.Pid}}", container).stdout.strip()
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+ kB)", status, re.M))
        memory[container] = f"peak {fields.get('VmHWM')}, now {fields.get('VmRSS')}"
    print(f"  memory: {json.dumps(memory)}", flush=True)

    catalog = stack.containers("catalog")[0]
    started = time.monotonic()
    run("docker", "restart", "-t", "15", catalog)
    restarted = time.monotonic() - started
    ready = stack.wait("the restarted catalog to be ready", stack.all_serving, 30)
    ready = None if ready is None else time.monotonic() - started
    print(f"  catalog restart: docker restart returned after {restarted:.1f} s; ready (all 3 replicas "
          f"serving) {'never' if ready is None else f'{ready:.2f} s'} after the restart began", flush=True)
    checks.check("the restarted catalog is ready within 5 s", ready is not None and ready < 5)
    checks.check("the restarted catalog answers the golden body",
                 get(stack.port, "/products", "1") == (200, *GOLDEN["1"][::-1]))



def database(checks, stack):
    """The two catalogs and their database: one catalog killed, PostgreSQL
    restarted, both under load; then an import through one catalog."""
    with Load(stack.port) as load:
        time.sleep(1)
        catalog_killed(checks, stack, load)
        postgres_restarted(checks, stack, load)
        renewed_in_place(checks, stack, load)
    imported_through_one(checks, stack)


def renewed_in_place(checks, stack, load):
    """`gen-keys.sh --renew --in-place`, as docs/deploy.md says for
    Compose: every service reloads its files (counted by its
    *_reloads_total, as the stack's Prometheus scrapes it) with no request
    failed."""
    reloads = ("sum(discount_reloads_total{outcome=\"success\"}) + "
               "sum(catalog_reloads_total{outcome=\"success\"})")
    replicas = len(stack.containers("discount")) + len(stack.containers("catalog"))
    before = prometheus_value(stack.prometheus_port, reloads) or 0
    owner = ["--owner", "65532:65532"] if os.geteuid() == 0 else []
    started = time.monotonic()
    run(str(REPO / "scripts" / "gen-keys.sh"), "--dir", stack.env["ECOMMERCE_KEYS"], "--renew", "--in-place",
        "--dns", "discount", *owner)
    took = stack.wait("every replica to reload its renewed files",
                      lambda: (prometheus_value(stack.prometheus_port, reloads) or 0) >= before + replicas, 90)
    ended = time.monotonic()
    total, failed, not_applied = summary(load.since(started, ended))
    print(f"  certificates renewed in place: all {replicas} replicas reloaded "
          f"{'never' if took is None else f'within {ended - started:.1f} s'}; {total} requests, "
          f"{failed} failed, {not_applied} not applied", flush=True)
    checks.check("renewed in place: every replica reloaded", took is not None)
    checks.check("renewed in place: no request failed", failed == 0 and total > 0,
                 f"{failed} of {total}: {failures(load.since(started, ended))}")


def catalog_killed(checks, stack, load):
    """SIGKILL to one catalog: HAProxy's connections inside it are cut, so
    at most the requests in flight there (one per load worker) may fail;
    HAProxy sends a GET met by a refused or cut connection to the other."""
    victim = stack.containers("catalog")[0]
    started = time.monotonic()
    run("docker", "kill", victim)
    # Load on the one left, until HAProxy's health check has taken the
    # killed one out (two missed checks, a second apart) and a little more.
    time.sleep(4)
    ended = time.monotonic()
    run("docker", "start", victim)
    back = stack.wait("the killed catalog serving again", stack.all_serving, 60)
    total, failed, not_applied = summary(load.since(started, ended))
    in_flight = len(load.threads)
    print(f"  one catalog killed: {total} requests in {ended - started:.1f} s, {failed} failed, "
          f"{not_applied} not applied; back {'never' if back is None else f'{back:.1f} s'} after docker start",
          flush=True)
    checks.check("catalog killed: only requests inside it may fail",
                 failed <= in_flight and total > 0, f"{failed} failed, at most {in_flight} were in flight")
    checks.check("catalog killed: it serves again once started", back is not None)


def postgres_restarted(checks, stack, load):
    """The catalogs serve from memory while PostgreSQL is away: no request
    fails and no answer lacks a product."""
    postgres = stack.containers("postgres")[0]
    healthy = lambda: run("docker", "inspect", "--format", "{{.State.Health.Status}}",  # noqa: E731
                          postgres, check=False).stdout.strip() == "healthy"
    started = time.monotonic()
    run("docker", "restart", "-t", "30", postgres)
    back = stack.wait("PostgreSQL healthy again", healthy, 60)
    ended = time.monotonic()
    results = load.since(started, ended)
    total, failed, not_applied = summary(results)
    lost = short(results, len(PRODUCTS))
    print(f"  PostgreSQL restarted: {total} requests in {ended - started:.1f} s, {failed} failed, "
          f"{lost} short of a product, {not_applied} not applied", flush=True)
    checks.check("PostgreSQL restarted: it is healthy again", back is not None)
    checks.check("PostgreSQL restarted: no request failed", failed == 0 and total > 0, f"{failed} of {total}")
    checks.check("PostgreSQL restarted: no product lost", lost == 0, f"{lost} answers short")


def imported_through_one(checks, stack):
    """`catalog import` in one catalog's container: both list the new
    product within 1 s of its end (NOTIFY; the 500 ms check is the
    backstop), PostgreSQL's restart just before included."""
    one, other = stack.containers("catalog")[:2]
    run("docker", "exec", one, "/catalog", "import", "products", "/import/more.csv")
    done = time.monotonic()
    both = lambda: all(NEW_PRODUCT in stack.products(c) for c in (one, other))  # noqa: E731
    took = stack.wait("both catalogs to list the imported product", both, 10)
    took = None if took is None else time.monotonic() - done
    print(f"  an import through {one}: listed by both catalogs "
          f"{'never' if took is None else f'{took * 1000:.0f} ms'} after it ended", flush=True)
    checks.check("an import through one catalog is served by both within 1 s",
                 took is not None and took <= 1.0, "never" if took is None else f"{took:.2f} s")


def leftovers(checks, stack):
    downed = stack.down()
    checks.check("down -v", downed.returncode == 0, downed.stderr[-500:])
    label = f"label=com.docker.compose.project={stack.project}"
    left = {
        "containers": run("docker", "ps", "-aq", "--filter", label).stdout.split(),
        "networks": run("docker", "network", "ls", "-q", "--filter", label).stdout.split(),
        "volumes": run("docker", "volume", "ls", "-q", "--filter", label).stdout.split(),
    }
    checks.check("nothing left behind", not any(left.values()), str(left))


if __name__ == "__main__":
    sys.exit(main())
