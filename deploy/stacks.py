"""What the stacks' tests share (deploy/test.py for Compose,
deploy/swarm/test.py for Swarm): the seed's golden bodies, one GET on a new
connection, a steady load whose every answer is kept, and what the stacks'
Prometheus sees."""

import collections
import http.client
import json
import urllib.parse
import urllib.request
import socket
import subprocess
import threading
import time

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


def get(port, path, user=None, timeout=5, host="127.0.0.1"):
    """(status, X-Discount-Status, body) of one GET on a new connection."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"X-USER-ID": user} if user is not None else {})
        response = connection.getresponse()
        return response.status, response.getheader("X-Discount-Status"), response.read().decode()
    finally:
        connection.close()


class Load:
    """Steady traffic: `workers` keep-alive clients, each asking for customer
    1's listing every few milliseconds; every answer is kept with the time
    its request was sent and the number of products it listed."""

    def __init__(self, port, workers=4, pause=0.004):
        self.port, self.pause = port, pause
        # (sent, status or None, X-Discount-Status or what failed, products)
        self.results = []
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
                body = response.read()
                if response.status == 200:
                    outcome = (sent, 200, response.getheader("X-Discount-Status"), len(json.loads(body)))
                else:
                    # For a failure, what it was, in place of X-Discount-Status.
                    outcome = (sent, response.status, f"{response.status} {body[:80]!r}", 0)
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException, ValueError) as error:
                outcome = (sent, None, f"{type(error).__name__}: {error}", 0)
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
    """(requests, failed, answered but not applied)."""
    failed = sum(1 for _, status, _, _ in results if status != 200)
    not_applied = sum(1 for _, status, xds, _ in results if status == 200 and xds != "applied")
    return len(results), failed, not_applied


def failures(results):
    """The commonest kinds of failure among `results`, with their counts."""
    kinds = collections.Counter(reason for _, status, reason, _ in results if status != 200)
    return dict(kinds.most_common(3))


def short(results, products):
    """Answers that listed fewer than `products` products."""
    return sum(1 for _, status, _, listed in results if status == 200 and listed < products)


# The alerts deploy/prometheus/rules.yml defines.
ALERTS = {"CertificateExpiresSoon", "NoDiscountReplicaServing", "ListingsNotApplied",
          "HighServerErrorRate", "NoCatalogRunning", "NoDiscountRunning", "DatabaseUnreachable",
          "ReplicaNotScraped"}


def prometheus_view(port):
    """({job: number of targets up}, {job: number of targets}, alert rules
    loaded) from the Prometheus API on 127.0.0.1:`port`; empty when it
    does not answer yet."""
    def ask(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as answer:
            return json.load(answer)["data"]
    try:
        targets = ask("/api/v1/targets?state=active")["activeTargets"]
        groups = ask("/api/v1/rules?type=alert")["groups"]
    except (OSError, ValueError, KeyError):
        return {}, {}, set()
    up, known = {}, {}
    for target in targets:
        job = target["labels"].get("job")
        known[job] = known.get(job, 0) + 1
        up[job] = up.get(job, 0) + (target["health"] == "up")
    return up, known, {rule["name"] for group in groups for rule in group["rules"]}


def prometheus_value(port, query):
    """The value of an instant `query` (one number) from the Prometheus API
    on 127.0.0.1:`port`, or None."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            result = json.load(answer)["data"]["result"]
        return float(result[0]["value"][1]) if result else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def scraped(checks, port, replicas, timeout=60):
    """Waits until the stack's Prometheus (on 127.0.0.1:`port`) scrapes
    exactly `replicas` ({job: count}), all up, with the alerting rules
    loaded; then checks that it did."""
    started = time.monotonic()
    while True:
        up, known, alerts = prometheus_view(port)
        if (up, known, alerts) == (replicas, replicas, ALERTS) or time.monotonic() - started > timeout:
            break
        time.sleep(0.5)
    print(f"  Prometheus: targets up {up} of {known} after {time.monotonic() - started:.1f} s; "
          f"alert rules {sorted(alerts)}", flush=True)
    checks.check("Prometheus finds and scrapes every catalog and discount replica",
                 (up, known) == (replicas, replicas), f"up {up}, known {known}")
    checks.check("Prometheus has the alerting rules", alerts == ALERTS, str(sorted(alerts)))
    # Its UI: the alerts page, and a script of the graph page's that the
    # image copies apart from the rest.
    pages = {}
    for page in ("/classic/alerts", "/classic/static/moment-timezone/moment-timezone-with-data.min.js"):
        try:
            pages[page] = get(port, page)[0]
        except OSError as error:
            pages[page] = str(error)
    checks.check("Prometheus's UI answers its pages", set(pages.values()) == {200}, str(pages))

