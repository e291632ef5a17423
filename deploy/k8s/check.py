"""Renders the Kubernetes manifests and validates them offline, with no
cluster: what .ci/run runs.

    python3 deploy/k8s/check.py        (needs kubectl and kubernetes-validate)

For deploy/k8s and deploy/k8s/cert-manager: `kubectl kustomize`, then
`kubernetes-validate --strict` against the three newest Kubernetes versions
it ships schemas for (cert-manager's kinds have none there, and are checked
by hand below), then what the schemas cannot see: every Secret a pod mounts
exists, every probe names a port of its container, discount's Service is
headless, the kubelet injects no service variables, and the
NetworkPolicies keep each admin port (plain HTTP, no authentication) to
named scrapers while every other port stays reachable.

deploy/k8s needs TLS files in deploy/k8s/keys; when there are none, this
makes throw-away ones (with scripts/gen-keys.sh) and removes them after.
Ends with "N passed, M failed".
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from kubernetes_validate.utils import all_versions

K8S = Path(__file__).resolve().parent
REPO = K8S.parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from checks import Checks  # noqa: E402



def newest_versions(count=3):
    """The `count` newest minor versions the installed schemas cover."""
    by_minor = {}
    for version in all_versions():
        by_minor[tuple(int(part) for part in version.split(".")[:2])] = version
    return [by_minor[minor] for minor in sorted(by_minor)[-count:]]


def render(checks, directory, name=None):
    rendered = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True)
    checks.check(f"kubectl kustomize {name or directory.relative_to(REPO)}", rendered.returncode == 0,
                 rendered.stderr.strip())
    return rendered.stdout if rendered.returncode == 0 else None


def validate(checks, name, text):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as manifest:
        manifest.write(text)
        manifest.flush()
        for version in newest_versions():
            validated = subprocess.run(
                ["kubernetes-validate", "--strict", "--quiet", "-k", version, manifest.name],
                capture_output=True, text=True)
            # Unknown kinds (cert-manager's) are warnings; anything else fails.
            errors = [line for line in (validated.stdout + validated.stderr).splitlines()
                      if not line.startswith("WARN") and "Couldn't find schema" not in line]
            checks.check(f"{name}: kubernetes-validate --strict -k {version}",
                         validated.returncode == 0 and not errors, "\n".join(errors))


def consistent(checks, name, text):
    """What a schema cannot check: the objects fit together."""
    objects = [o for o in yaml.safe_load_all(text) if o]
    kinds = {}
    for o in objects:
        kinds.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    secrets = set(kinds.get("Secret", {}))
    secrets |= {c["spec"]["secretName"] for c in kinds.get("Certificate", {}).values()}
    for deployment in kinds.get("Deployment", {}).values():
        pod = deployment["spec"]["template"]["spec"]
        who = f"{name}: deployment/{deployment['metadata']['name']}"
        mounted = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        checks.check(f"{who} mounts only Secrets that exist", mounted and mounted <= secrets,
                     f"mounts {sorted(mounted)}, has {sorted(secrets)}")
        checks.check(f"{who} has enableServiceLinks: false", pod.get("enableServiceLinks") is False)
        for container in pod.get("initContainers", []) + pod["containers"]:
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    checks.check(f"{who}: {variable['name']} comes from a Secret that exists",
                                 ref["name"] in secrets, f"{ref['name']} not in {sorted(secrets)}")
                checks.check(f"{who}: {variable['name']} holds no database URL in the pod spec",
                             "postgres://" not in str(variable.get("value", "")))
        for container in pod.get("initContainers", []):
            limits = container.get("resources", {}).get("limits", {})
            checks.check(f"{who}: init container {container['name']} has a memory limit", "memory" in limits)
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        admin = [p for c in pod["containers"] for p in c.get("ports", []) if p.get("name") == "admin"]
        if admin:
            checks.check(f"{who}: its pods ask to be scraped on the admin port",
                         annotations.get("prometheus.io/scrape") == "true"
                         and annotations.get("prometheus.io/port") == str(admin[0]["containerPort"]),
                         str(annotations))
            services = [svc for svc in kinds.get("Service", {}).values()
                        if selects({"matchLabels": svc["spec"].get("selector", {})},
                                   deployment["spec"]["template"]["metadata"].get("labels", {}))]
            checks.check(f"{who}: its Service has the admin port",
                         any(port.get("targetPort") in ("admin", admin[0]["containerPort"])
                             for svc in services for port in svc["spec"].get("ports", [])),
                         str([svc["spec"].get("ports") for svc in services]))
        for container in pod["containers"]:
            ports = {p["name"] for p in container.get("ports", [])}
            probed = {container[probe]["httpGet"]["port"]
                      for probe in ("readinessProbe", "livenessProbe") if probe in container}
            checks.check(f"{who} probes named ports of its container", probed and probed <= ports,
                         f"probes {sorted(probed)}, ports {sorted(ports)}")
            limits = container.get("resources", {}).get("limits", {})
            checks.check(f"{who} has a memory limit", "memory" in limits)
    for config in kinds.get("ConfigMap", {}).values():
        checks.check(f"{name}: configmap/{config['metadata']['name']} holds no database URL",
                     "postgres://" not in str(config.get("data", {})))
    discount = kinds.get("Service", {}).get("discount", {})
    checks.check(f"{name}: the discount Service is headless",
                 discount.get("spec", {}).get("clusterIP") == "None")
    network_policies(checks, name, kinds)


def selects(selector, labels):
    """Whether a label selector (matchLabels only, as ours are) selects
    `labels`; an empty selector selects everything."""
    if selector.get("matchExpressions"):
        return False
    return all(labels.get(key) == value for key, value in (selector.get("matchLabels") or {}).items())


def covers(rule, port):
    """Whether an ingress rule applies to the container port `port`: no
    `ports` means every port; a port is named or numbered, perhaps with
    an endPort."""
    if not rule.get("ports"):
        return True
    for allowed in rule["ports"]:
        if allowed.get("protocol", "TCP") != port.get("protocol", "TCP"):
            continue
        given = allowed.get("port")
        if given is None or given == port.get("name"):
            return True
        if isinstance(given, int) and given <= port["containerPort"] <= allowed.get("endPort", given):
            return True
    return False


def too_broad(peer):
    """Why an ingress peer lets in more than a named scraper, or None.
    Labels are no proof of who a pod is outside a namespace one controls:
    anyone who can create a pod can give it any label in a namespace of
    their own."""
    if "ipBlock" in peer:
        cidr = peer["ipBlock"].get("cidr", "")
        return f"ipBlock {cidr} is every address" if cidr.endswith("/0") else None
    namespaces = peer.get("namespaceSelector")
    pods = peer.get("podSelector")
    if namespaces is not None and not namespaces:
        return "namespaceSelector {} is every namespace (any pod can carry any label in its own)"
    if namespaces is None and pods is not None and not pods:
        return "podSelector {} is every pod of the namespace"
    return None


def network_policies(checks, name, kinds):
    """Every pod with an admin port is isolated for ingress, its admin
    port reachable only from named peers (the kubelet's probes come from
    the node, which NetworkPolicy always lets in), and every other port
    still has a rule, so that the policy does not cut the service off."""
    policies = [p for p in kinds.get("NetworkPolicy", {}).values()
                if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    deployments = kinds.get("Deployment", {}).values()
    for policy in policies:
        checks.check(f"{name}: networkpolicy/{policy['metadata']['name']} selects the pods of a Deployment",
                     any(selects(policy["spec"]["podSelector"], d["spec"]["template"]["metadata"].get("labels", {}))
                         for d in deployments))
    for deployment in deployments:
        who = f"{name}: deployment/{deployment['metadata']['name']}"
        labels = deployment["spec"]["template"]["metadata"].get("labels", {})
        mine = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        rules = [rule for p in mine for rule in p["spec"].get("ingress", [])]
        ports = [port for c in deployment["spec"]["template"]["spec"]["containers"] for port in c.get("ports", [])]
        admin = [port for port in ports if port.get("name") == "admin"]
        if not admin:
            continue
        checks.check(f"{who} is selected by a NetworkPolicy for Ingress", bool(mine),
                     "" if mine else "none: its admin port is open to every pod in the cluster")
        for port in admin:
            reaching = [rule for rule in rules if covers(rule, port)]
            problems = []
            for rule in reaching:
                if not rule.get("from"):
                    problems.append(f"a rule with no `from` opens it to everything: {rule}")
                problems += [why for why in map(too_broad, rule.get("from") or []) if why]
            if not mine:
                problems.append("no NetworkPolicy selects the pods")
            checks.check(f"{who}: the admin port ({port['containerPort']}) is open only to named peers",
                         not problems, "; ".join(problems))
        for port in ports:
            if port in admin:
                continue
            reachable = not mine or any(covers(rule, port) for rule in rules)
            checks.check(f"{who}: port {port.get('name', port['containerPort'])} still has an ingress rule",
                         reachable, "" if reachable else "the NetworkPolicy selects the pods and no rule allows this port")


def on_postgres(checks, name, text):
    """With the postgres component: the catalog and its init container read
    the URL from the Secret catalog-database, mounted as a file (no
    environment variable holds it), the init container migrates, and the
    catalog does not."""
    objects = [o for o in yaml.safe_load_all(text) if o]
    catalog = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "catalog")
    pod = catalog["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in pod.get("initContainers", []) + pod["containers"]:
        who = f"{name}: {container['name']}"
        env = {v["name"]: v for v in container.get("env", [])}
        path = env.get("CATALOG_DATABASE_URL_FILE", {}).get("value", "")
        mount = next((m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"] + "/")), None)
        secret = volumes.get(mount["name"], {}).get("secret", {}).get("secretName", "") if mount else ""
        checks.check(f"{who} reads the database URL from a file of the Secret catalog-database",
                     secret.startswith("catalog-database"), f"{path}, mount {mount}, secret {secret!r}")
        checks.check(f"{who} has no CATALOG_DATABASE_URL variable", "CATALOG_DATABASE_URL" not in env)
    env = {v["name"]: v for v in pod["containers"][0].get("env", [])}
    checks.check(f"{name}: the catalog does not migrate", env.get("CATALOG_NO_MIGRATE", {}).get("value") == "true")
    checks.check(f"{name}: an init container applies the migrations",
                 any(c.get("args") == ["migrate"] for c in pod.get("initContainers", [])))
    checks.check(f"{name}: no /data volume", "data" not in volumes)


def with_postgres(directory, overlay):
    """A copy of deploy/k8s with the postgres component turned on in
    `overlay` (its path below deploy/k8s), as docs/deploy.md says to, and a
    made-up database URL; None when the kustomization has lost the lines
    to uncomment. Already on (a user followed the docs) is fine too."""
    copy = Path(directory) / "k8s"
    if not copy.exists():
        shutil.copytree(K8S, copy)
    kustomization = copy / overlay / "kustomization.yaml"
    text = kustomization.read_text()
    turned_on = re.sub(r"^# (components:\n)#( +- (\.\./)?postgres)$", r"\1\2", text, flags=re.M)
    if "\ncomponents:\n" not in turned_on:
        return None
    kustomization.write_text(turned_on)
    (copy / "postgres" / "database_url").write_text("postgres://catalog:s3cret@db.example.internal:5432/catalog")
    return copy / overlay


def main():
    checks = Checks()
    made_keys = not (K8S / "keys" / "cert.pem").exists()
    if made_keys:
        subprocess.run([str(REPO / "scripts" / "gen-keys.sh"), "--dir", str(K8S / "keys"), "--dns", "discount"],
                       check=True, capture_output=True)
    try:
        for directory in (K8S, K8S / "cert-manager"):
            name = str(directory.relative_to(REPO))
            text = render(checks, directory)
            if text is not None:
                validate(checks, name, text)
                consistent(checks, name, text)
        with tempfile.TemporaryDirectory() as scratch:
            for overlay in (".", "cert-manager"):
                name = f"deploy/k8s/{overlay} with the postgres component".replace("/.", "")
                directory = with_postgres(scratch, overlay)
                checks.check(f"{name}: its kustomization has the component's lines to uncomment",
                             directory is not None)
                text = render(checks, directory, name) if directory else None
                if text is not None:
                    validate(checks, name, text)
                    consistent(checks, name, text)
                    on_postgres(checks, name, text)
    finally:
        if made_keys:
            shutil.rmtree(K8S / "keys", ignore_errors=True)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
