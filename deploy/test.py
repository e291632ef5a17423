"""The Compose stack under faults: what deploy/test.sh runs once the images
are built.

    python3 deploy/test.py

Brings deploy/compose.yaml up under a throw-away project name with keys made
for the run, through deploy/up.sh (docs/deploy.md's quick start), then checks
the golden bodies, that calls spread over the three discount replicas, and
what a steady load sees while one replica is killed, frozen, cut off the
network, and while all three are restarted one by one; then the catalog's
own restart. Prints each figure, ends with "N passed, M failed", and always
takes the stack down (`down -v`), checking that nothing is left behind.

Traffic goes only to the catalog's port, published on 127.0.0.1; every
wait and the load itself are bounded in time.
"""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
sys.path.insert(0, str(REPO / "scripts"))
from checks import Checks  # noqa: E402

PRODUCTS = [
    (1, "iphone-x", "64GB, black and iOS 12", 99999, 89999),
    (2, "notebook-avell-g1511", "Notebook Gamer Intel Core i7", 150000, 135000),
    (3, "playstation-4-slim", "1TB Console", 32999, 29699),
]


def golden(discount):
    """The seed's Go catalog's body, byte for byte: `discount(value)` is the
    discount_value member for a product, or None for none."""
    items = []
    for pid, slug, description, price, value in PRODUCTS:
        item = (f'{{"id":{pid},"slug":"{slug}","description":"{description}",'
                f'"price_in_cents":{price}')
        member = discount(value)
        items.append(item + (f',"discount_value":{member}' if member is not None else "") + "}")
    return "[" + ",".join(items) + "]\n"


GOLDEN = {
    "1": (golden(lambda v: f'{{"pct":0.1,"value_in_cents":{v}}}'), "applied"),
    "2": (golden(lambda v: "{}"), "applied"),
    "3": (golden(lambda v: None), None),
    None: (golden(lambda v: None), None),
}



def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*command, check=True, **kwargs):
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120, **kwargs)


def get(port, path, user=None, timeout=5):
    """(status, X-Discount-Status, body) of one GET on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"X-USER-ID": user} if user is not None else {})
        response = connection.getresponse()
        return response.status, response.getheader("X-Discount-Status"), response.read().decode()
    finally:
        connection.close()


class Stack:
    """One Compose project: its name, ports and containers."""

    def __init__(self, keys):
        self.project = os.environ.get("ECOMMERCE_TEST_PROJECT", f"ecomtest{os.getpid()}")
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = dict(
            os.environ,
            COMPOSE_PROJECT_NAME=self.project,
            ECOMMERCE_KEYS=keys,
            CATALOG_HOST_PORT=f"127.0.0.1:{self.port}",
            CATALOG_METRICS_HOST_PORT=f"127.0.0.1:{self.metrics_port}",
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

    def readyz(self):
        try:
            status, _, body = get(self.port, "/readyz", timeout=2)
            return status, body
        except OSError as error:
            return None, str(error)

    def replica_states(self):
        """{ip: state} as the catalog's /readyz lists them."""
        _, body = self.readyz()
        states = {}
        for line in body.splitlines()[1:]:
            address, _, state = line.partition(" ")
            states[address.rsplit(":", 1)[0]] = state
        return states

    def wait(self, what, condition, timeout):
        """Seconds until `condition()` held (polled every 50 ms), or None."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if condition():
                return time.monotonic() - started
            time.sleep(0.05)
        print(f"  (gave up waiting {timeout:.0f} s for {what}; /readyz: {self.readyz()})", flush=True)
        return None

    def all_serving(self, count=3):
        status, body = self.readyz()
        return status == 200 and body.startswith(f"ready: {count} of {count} ")

    def calls_answered(self, container):
        """ApplyDiscounts calls the replica logged (one INFO line per call)."""
        logs = run("docker", "logs", container)
        return sum(1 for line in (logs.stdout + logs.stderr).splitlines()
                   if "call answered" in line and "ApplyDiscounts" in line)


class Load:
    """Steady traffic: `workers` keep-alive clients, each asking for customer
    1's listing every few milliseconds; every answer is kept with the time
    its request was sent."""

    def __init__(self, port, workers=4, pause=0.004):
        self.port, self.pause = port, pause
        self.results = []  # (sent, status or None, X-Discount-Status)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(workers)]

    def worker(self):
        connection = None
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/products", headers={"X-USER-ID": "1"})
                response = connection.getresponse()
                response.read()
                outcome = (sent, response.status, response.getheader("X-Discount-Status"))
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                outcome = (sent, None, None)
                if connection is not None:
                    connection.close()
                connection = None
            with self.lock:
                self.results.append(outcome)
            time.sleep(self.pause)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def since(self, start, end=None):
        with self.lock:
            return [r for r in self.results if r[0] >= start and (end is None or r[0] < end)]


def summary(results):
    failed = sum(1 for _, status, _ in results if status != 200)
    not_applied = sum(1 for _, status, xds in results if status == 200 and xds != "applied")
    return len(results), failed, not_applied


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
    checks.check(f"{name}: no request failed", failed == 0 and total > 0, f"{failed} of {total}")
    checks.check(f"{name}: every listing applied once the catalog noticed", late == 0, f"{late} not applied")
    checks.check(f"{name}: the replica came back", back_after is not None)
    return every


def main():
    checks = Checks()
    keys = tempfile.mkdtemp(prefix="ecommerce-keys-")
    owner = ["--owner", "65532:65532"] if os.geteuid() == 0 else []
    run(str(REPO / "scripts" / "gen-keys.sh"), "--dir", keys, "--dns", "discount", *owner)
    stack = Stack(keys)
    try:
        exercise(checks, stack)
    finally:
        leftovers(checks, stack)
        shutil.rmtree(keys, ignore_errors=True)
    return checks.finish()


def exercise(checks, stack):
    took = stack.up()
    print(f"  the stack was up and ready in {took:.1f} s", flush=True)
    discounts = stack.containers("discount")
    checks.check("three discount replicas", len(discounts) == 3, str(discounts))

    for user, (body, status) in GOLDEN.items():
        got = get(stack.port, "/products", user)
        checks.check(f"golden body for X-USER-ID {user or '(none)'}",
                     got == (200, status, body), repr(got)[:300])

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
