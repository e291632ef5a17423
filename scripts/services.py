"""Our two binaries as child processes, for scripts/bench.py and
interop/interop.py.

Each service starts on 127.0.0.1 with a port the OS picks. The port is read
from /proc (the socket the process listens on), which works whatever
RUST_LOG hides. The service's log is kept, and shown if it fails to start.
"""

import http.client
import os
import subprocess
import threading
import time
import urllib.request

TIMEOUT = 10  # seconds; anything slower is a hang
TICKS = os.sysconf("SC_CLK_TCK")


class Service:
    """One of our binaries, started with its port chosen by the OS.

    `cpu` pins it with taskset (for benchmarks); `log_level` is its RUST_LOG
    (None: unset, so the binary's default filter).
    """

    def __init__(self, command, log_level="warn", cpu=None, env=None):
        # With --metrics-addr the process listens twice; the metrics port is
        # the one that answers GET /metrics.
        self.metrics_port = None
        expected = 2 if "--metrics-addr" in command else 1
        if cpu is not None:
            command = ["taskset", "-c", cpu, *command]
        env = {"LOG_FORMAT": "text", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
        if log_level is not None:  # None: the binary's own default filter
            env["RUST_LOG"] = log_level
        if "TOKIO_WORKER_THREADS" in os.environ:
            env["TOKIO_WORKER_THREADS"] = os.environ["TOKIO_WORKER_THREADS"]
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        self.log = []
        self.final = None  # (cpu seconds, peak RSS MB) once kill() has ended it
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.port = self._wait_for_ports(expected)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def _read(self):
        for line in self.process.stderr:
            self.log.append(line)

    def _wait_for_ports(self, expected):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            ports = listening_ports(self.process.pid)
            if len(ports) == 1 and expected == 1:
                return ports[0]
            if len(ports) == 2 and expected == 2:
                metrics = [port for port in ports if serves_metrics(port)]
                if len(metrics) == 1:
                    self.metrics_port = metrics[0]
                    return next(port for port in ports if port != metrics[0])
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.process.args} did not start:\n{''.join(self.log)}")

    def cpu_seconds(self):
        if self.final:
            return self.final[0]
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime

    def peak_rss_mb(self):
        if self.final:
            return self.final[1]
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited within TIMEOUT."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self):
        """SIGKILL at once, as a crash would, and reap it. cpu_seconds() and
        peak_rss_mb() go on answering with what it had used just before."""
        if self.process.poll() is None:
            self.final = (self.cpu_seconds(), self.peak_rss_mb())
            self.process.kill()
            self.process.wait()


def listening_ports(pid):
    """The TCP ports process `pid` listens on, from /proc."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def serves_metrics(port):
    """Whether 127.0.0.1:`port` answers GET /metrics (the admin listener)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return answer.status == 200
    except (OSError, ValueError, http.client.HTTPException):  # a TLS port, a 404
        return False


def start_discount(bin_dir, keys, extra=(), **options):
    """discount with the keys in `keys` (as scripts/gen-keys.sh lays them out)."""
    return Service([f"{bin_dir}/discount", "--listen-addr", "127.0.0.1", "--cert", f"{keys}/cert.pem",
                    "--key", f"{keys}/private.key", "--client-ca", f"{keys}/ca.pem", *extra, "0"],
                   **options)


def start_catalog(bin_dir, keys, discount_port, extra=(), **options):
    """catalog pointed at a discount on 127.0.0.1:`discount_port`, or, given
    a list of ports, at one replica on each (`--discount-host` as a comma
    list; pass `--discount-server-name` in `extra` for the name to check)."""
    ports = discount_port if isinstance(discount_port, (list, tuple)) else [discount_port]
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return Service([f"{bin_dir}/catalog", "--listen-addr", "127.0.0.1", "--discount-host",
                    hosts, "--discount-ca", f"{keys}/ca.pem",
                    "--client-cert", f"{keys}/client.pem", "--client-key", f"{keys}/client.key",
                    *extra, "0"],
                   **options)
