"""The Swarm stack under rolling updates: what deploy/swarm/test.sh runs once
the images are built and a swarm is active.

    python3 deploy/swarm/test.py

Deploys deploy/swarm/stack.yaml under a throw-away stack name, port and
keys through deploy/swarm/up.sh (docs/deploy.md's Swarm section), checks
the golden bodies, then forces a rolling update of discount and then of the
catalog (`docker service update --force`), then renews the certificates
and runs up.sh again, all under a steady stream of customer 1's listings:
no request may fail, and at most 1% of listings may come back without
their discount. Prints each figure, ends with "N passed,
M failed", and always removes the stack (`up.sh down`), checking that no
container, network, secret or volume of it is left.

Traffic goes only to the published port on 127.0.0.1; every wait and the
load itself are bounded in time.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWARM = Path(__file__).resolve().parent
DEPLOY = SWARM.parent
REPO = DEPLOY.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(DEPLOY))
from checks import Checks  # noqa: E402
from stacks import GOLDEN, Load, failures, free_port, get, run, scraped, summary  # noqa: E402

# The bar for a rolling update: listings answered without their
# discount, as a share of all.
MOST_NOT_APPLIED = 0.01


class Stack:
    def __init__(self, keys):
        self.keys = keys
        self.name = os.environ.get("STACK", f"ecomswarm{os.getpid()}")
        self.port = free_port()
        self.prometheus_port = free_port()
        self.env = dict(os.environ, STACK=self.name, ECOMMERCE_KEYS=keys,
                        CATALOG_HOST_PORT=str(self.port), PROMETHEUS_HOST_PORT=str(self.prometheus_port))

    def up(self):
        started = time.monotonic()
        subprocess.run([str(SWARM / "up.sh")], env=self.env, check=True, timeout=300)
        return time.monotonic() - started

    def down(self):
        return subprocess.run([str(SWARM / "up.sh"), "down"], env=self.env,
                              capture_output=True, text=True, timeout=180)

    def tasks(self, service):
        """The ids of the service's tasks that are meant to run."""
        return set(run("docker", "service", "ps", "-q", "--filter", "desired-state=running",
                       f"{self.name}_{service}").stdout.split())

    def update(self, service):
        """`docker service update --force`, which returns once the update
        converged (every task replaced, each new one healthy)."""
        started = time.monotonic()
        done = subprocess.run(["docker", "service", "update", "--force", "--detach=false",
                               f"{self.name}_{service}"],
                              capture_output=True, text=True, timeout=600)
        state = run("docker", "service", "inspect", "--format", "{{.UpdateStatus.State}}",
                    f"{self.name}_{service}", check=False).stdout.strip()
        return time.monotonic() - started, done.returncode == 0 and state == "completed", done.stderr[-500:]

    def secrets(self, service):
        """The names of the secrets the service's tasks are given."""
        return run("docker", "service", "inspect", "--format",
                   "{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{end}}",
                   f"{self.name}_{service}").stdout.split()

    def left(self):
        label = f"label=com.docker.stack.namespace={self.name}"
        return {kind: run("docker", *command, "-q", "--filter", label).stdout.split()
                for kind, command in [("containers", ["ps", "-a"]), ("services", ["service", "ls"]),
                                      ("networks", ["network", "ls"]), ("secrets", ["secret", "ls"]),
                                      ("volumes", ["volume", "ls"])]}


def rolling_update(checks, stack, load, service):
    before = stack.tasks(service)
    started = time.monotonic()
    took, converged, errors = stack.update(service)
    after = stack.tasks(service)
    ended = time.monotonic()
    # A few seconds more, so that what the last replaced task did is seen.
    time.sleep(3)
    total, failed, not_applied = summary(load.since(started, ended))
    share = not_applied / total if total else 1.0
    print(f"  rolling update of {service}: converged in {took:.1f} s; {total} requests, "
          f"{failed} failed, {not_applied} not applied ({share:.2%})", flush=True)
    checks.check(f"{service}: the update converged", converged, errors)
    checks.check(f"{service}: every task was replaced", after and not before & after,
                 f"before {sorted(before)}, after {sorted(after)}")
    checks.check(f"{service}: no request failed", failed == 0 and total > 0,
                 f"{failed} of {total}: {failures(load.since(started, ended))}")
    checks.check(f"{service}: at most {MOST_NOT_APPLIED:.0%} of listings not applied",
                 share <= MOST_NOT_APPLIED, f"{not_applied} of {total}")


def renewed(checks, stack, load):
    """New certificates from the same CA (gen-keys.sh --renew), then up.sh
    again, as docs/deploy.md says: each is a new secret, and the services
    using them are rolled onto it under the load; up.sh returns once they
    are."""
    before = {service: stack.secrets(service) for service in ("discount", "catalog")}
    tasks = {service: stack.tasks(service) for service in before}
    owner = ["--owner", "65532:65532"] if os.geteuid() == 0 else []
    run(str(REPO / "scripts" / "gen-keys.sh"), "--dir", stack.keys, "--renew", "--dns", "discount", *owner)
    started = time.monotonic()
    deployed = subprocess.run([str(SWARM / "up.sh")], env=stack.env, capture_output=True, text=True, timeout=600)
    ended = time.monotonic()
    time.sleep(3)
    total, failed, not_applied = summary(load.since(started, ended))
    share = not_applied / total if total else 1.0
    print(f"  certificates renewed, up.sh again: {ended - started:.1f} s; {total} requests, {failed} failed, "
          f"{not_applied} not applied ({share:.2%})", flush=True)
    checks.check("renewal: up.sh succeeded", deployed.returncode == 0, deployed.stderr[-500:])
    for service in before:
        after = stack.secrets(service)
        checks.check(f"renewal: {service} has new certificate secrets", after and after != before[service],
                     f"before {before[service]}, after {after}")
        checks.check(f"renewal: every {service} task was replaced", not tasks[service] & stack.tasks(service))
    checks.check("renewal: no request failed", failed == 0 and total > 0,
                 f"{failed} of {total}: {failures(load.since(started, ended))}")
    checks.check(f"renewal: at most {MOST_NOT_APPLIED:.0%} of listings not applied",
                 share <= MOST_NOT_APPLIED, f"{not_applied} of {total}")


def exercise(checks, stack):
    took = stack.up()
    print(f"  the stack was deployed and ready in {took:.1f} s", flush=True)
    for user, (body, status) in GOLDEN.items():
        got = get(stack.port, "/products", user)
        checks.check(f"golden body for X-USER-ID {user or '(none)'}",
                     got == (200, status, body), repr(got)[:300])
    scraped(checks, stack.prometheus_port, {"catalog": 2, "discount": 3})

    with Load(stack.port) as load:
        time.sleep(1)
        rolling_update(checks, stack, load, "discount")
        rolling_update(checks, stack, load, "catalog")
        renewed(checks, stack, load)
    total, failed, not_applied = summary(load.results)
    print(f"  the whole load: {total} requests, {failed} failed, {not_applied} not applied", flush=True)


def main():
    checks = Checks()
    keys = tempfile.mkdtemp(prefix="ecommerce-swarm-keys-")
    owner = ["--owner", "65532:65532"] if os.geteuid() == 0 else []
    run(str(REPO / "scripts" / "gen-keys.sh"), "--dir", keys, "--dns", "discount", *owner)
    stack = Stack(keys)
    try:
        exercise(checks, stack)
    finally:
        downed = stack.down()
        checks.check("up.sh down", downed.returncode == 0, downed.stderr[-500:])
        left = stack.left()
        checks.check("nothing of the stack left behind", not any(left.values()), str(left))
        shutil.rmtree(keys, ignore_errors=True)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
