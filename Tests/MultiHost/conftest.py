"""The cluster scripts/multihost made (its description in $MULTIHOST), seen from the client
host: a deployment-like object for the integration tests' clients, and the means to cut a
host's link, kill a process, read a host's metrics."""
import json
import os
import signal
import ssl
import subprocess
import sys
import time

import pytest
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
NOWHERE = "10.77.0.99"   # on the hosts' subnet, and no host has it
sys.path.insert(0, os.path.join(HERE, "..", "IntegrationTests"))


class Cluster:
    def __init__(self, info):
        self.info = info
        self.host = info["lb"]
        self.port = 5001
        self.base = info["base"]
        self.origin = info["base"]
        self.ca = info["ca"]

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.ca)

    def login(self, name, password=None):
        """Logs in as a person would: after a 429, again once `retry_after` has passed (a
        coordinator that took over counts every login burst as spent, for up to 12 s)."""
        s = requests.Session()
        s.trust_env = False
        s.verify = self.ca
        deadline = time.monotonic() + 40
        while True:
            r = s.post(self.base + "/api/login", json={"username": name, "password": password or self.info["users"][name]}, timeout=10)
            if r.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(min(r.json().get("retry_after", 1), 5))
        assert r.status_code == 200, r.text
        return s

    def active_coordinators(self):
        """The coordinators that say they hold the lease (those that answer at all)."""
        out = []
        for c in ("coord1", "coord2"):
            try:
                if self.metric(c, "securechat_coordinator_active") == 1:
                    out.append(c)
            except requests.RequestException:
                pass
        return out

    def worker_epochs(self):
        return {w: requests.get("http://%s:7101/healthz" % self.ip(w), timeout=5).json()["coordinator_epoch"]
                for w in ("w1", "w2", "w3")}

    def ip(self, host):
        return self.info["hosts"][host]["ip"]

    def cut(self, host):
        """The host's only link set down: no FIN, no RST, silence (as a pulled cable)."""
        subprocess.run(["ip", "-n", self.info["hosts"][host]["ns"], "link", "set", "eth0", "down"], check=True)

    def mend(self, host):
        subprocess.run(["ip", "-n", self.info["hosts"][host]["ns"], "link", "set", "eth0", "up"], check=True)

    def route_nowhere(self, host, ip):
        """From `host`, packets to `ip` go to an address nobody has: silence, as a partition."""
        subprocess.run(["ip", "-n", self.info["hosts"][host]["ns"], "route", "add", ip + "/32", "via", NOWHERE], check=True)

    def route_back(self, host, ip):
        subprocess.run(["ip", "-n", self.info["hosts"][host]["ns"], "route", "del", ip + "/32", "via", NOWHERE], check=True)

    def kill(self, process, sig=signal.SIGKILL):
        os.killpg(self.info["pids"][process], sig)

    def metric(self, host, name):
        """The sum of a Prometheus metric's samples on a host's --metrics-listen :9100."""
        text = requests.get("http://%s:9100/metrics" % self.ip(host), timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self, process):
        with open(self.info["logs"][process]) as f:
            return f.read()


@pytest.fixture(scope="session")
def cluster():
    if "MULTIHOST" not in os.environ:
        pytest.fail("run these through scripts/multihost --test: they need its hosts")
    with open(os.environ["MULTIHOST"]) as f:
        return Cluster(json.load(f))


def host_of(worker_id):
    """The host a worker runs on: securechat-worker@01 on w2 is `w2-01` (--id %H-%i)."""
    return worker_id.rsplit("-", 1)[0]


def mended(cluster, host, deadline=30):
    """After a cut: the host back and its processes reachable again."""
    cluster.mend(host)
    end = time.time() + deadline
    while time.time() < end:
        r = subprocess.run(["ping", "-c", "1", "-W", "1", cluster.ip(host)], capture_output=True)
        if r.returncode == 0:
            return
    raise AssertionError("host %s not back" % host)
