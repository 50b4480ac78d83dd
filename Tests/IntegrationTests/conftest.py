"""Starts a real SecureChat deployment per test: the `securechat run` launcher
with its own redis-server, coordinator, two workers and the TLS gateway, on a
free port with a temporary state folder. Every process is stopped afterwards."""
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile

import pytest
import requests

from polling import wait_until  # noqa: F401  (tests import it from here)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SECURECHAT_BIN", os.path.join(ROOT, ".build", "debug"))

# Users every deployment gets besides the shipped ones (scrypt-hashed by `securechat users add`).
EXTRA_USERS = ["alice", "bob", "carol", "dave"]


def password_for(name):
    return {"admin": "password123", "team_member": "securechat456"}.get(name, "pw-%s-123456" % name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, timeout, what="listening"):
    """Polls until something accepts TCP connections on 127.0.0.1:port."""
    def accepts():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False
    wait_until(accepts, timeout, what=what)


@pytest.fixture(scope="session")
def users_file():
    """users.json plus test users, made once per test session."""
    d = tempfile.mkdtemp(prefix="sc-users-")
    path = os.path.join(d, "users.json")
    shutil.copy(os.path.join(ROOT, "users.json"), path)
    for name in EXTRA_USERS:
        subprocess.run([os.path.join(BIN, "securechat"), "users", "add", name, "--users-file", path],
                       input=password_for(name) + "\n", text=True, check=True, capture_output=True)
    yield path
    shutil.rmtree(d, ignore_errors=True)


class ProxiedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a gateway behind `--proxy-protocol`: `header` is sent before the TLS handshake."""

    def __init__(self, port, header, context):
        super().__init__("127.0.0.1", port, context=context, timeout=30)
        self.header = header

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.sendall(self.header)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


# Deployments not yet stopped: a failing test's report carries the end of each one's log.
LIVE = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for d in LIVE:
            lines = d.log_text().splitlines()[-120:]
            report.sections.append(("launcher log %s (last %d lines)" % (d.state, len(lines)), "\n".join(lines)))


class Deployment:
    def __init__(self, users_file, workers=2, extra_args=(), allow_demo=True, worker_header=True):
        self.port = free_port()
        self.base = "https://127.0.0.1:%d" % self.port
        self.origin = "https://127.0.0.1:%d" % self.port
        self.state = tempfile.mkdtemp(prefix="sc-")
        self.log_path = os.path.join(self.state, "launcher.log")
        self.log = open(self.log_path, "w")
        args = [os.path.join(BIN, "securechat"), "run", "--state-dir", self.state, "--port", str(self.port),
                "--host", "127.0.0.1", "--workers", str(workers), "--users-file", users_file,
                "--web-dir", os.path.join(ROOT, "web")] + (["--worker-header"] if worker_header else []) + \
            (["--allow-demo-users"] if allow_demo else []) + list(extra_args)
        self.args = args
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        self.workers = workers
        LIVE.append(self)
        try:
            wait_until(self.healthy, 60, what="deployment healthy")
        except BaseException as e:
            tail = "\n".join(self.log_text().splitlines()[-120:])
            self.stop()
            raise AssertionError("%s; the launcher's log ends:\n%s" % (e, tail)) from e

    def healthy(self):
        if self.proc.poll() is not None:
            raise RuntimeError("launcher exited: " + open(self.log_path).read()[-2000:])
        if "--proxy-protocol" in self.args:
            conn = ProxiedHTTPS(self.port, b"PROXY UNKNOWN\r\n", self.ssl_context())
            try:
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                return r.status == 200 and json.loads(r.read())["workers"] == self.workers
            finally:
                conn.close()
        r = requests.get(self.base + "/healthz", verify=self.ca, timeout=2)
        return r.status_code == 200 and r.json()["workers"] == self.workers

    @property
    def ca(self):
        """The self-signed certificate the launcher generated (SAN localhost, 127.0.0.1): clients verify it."""
        return os.path.join(self.state, "tls", "cert.pem")

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.ca)

    def login(self, name, password=None):
        s = requests.Session()
        s.trust_env = False  # else REQUESTS_CA_BUNDLE would override verify
        s.verify = self.ca
        r = s.post(self.base + "/api/login", json={"username": name, "password": password or password_for(name)})
        assert r.status_code == 200, r.text
        return s

    def pid_of(self, child):
        """The pid of a child of this deployment: 'worker-1', 'coordinator', 'gateway' or 'redis'."""
        if child.startswith("coordinator-"):
            pattern = "securechat-coordinator .*--state-dir %s .*--id %s " % (self.state, child)
        pattern = {
            "coordinator": "securechat-coordinator .*--state-dir %s " % self.state,
            "gateway": "securechat-gateway .*--state-dir %s " % self.state,
            "redis": "redis-server unixsocket:%s/redis.sock" % self.state,
        }.get(child, pattern if child.startswith("coordinator-") else "securechat-worker .*--listen %s/%s.sock" % (self.state, child))
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        pids = [int(p) for p in out if int(p) != os.getpid()]
        return pids[0] if len(pids) == 1 else None

    def kill(self, child, sig=signal.SIGKILL):
        pid = self.pid_of(child)
        assert pid, "no process for " + child
        os.kill(pid, sig)
        return pid

    def pause_launcher(self):
        """Stops the launcher from restarting children, so a test controls how long an outage lasts."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume_launcher(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def worker_health(self, worker):
        """GET /healthz on a worker's own socket: (status code, body)."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        try:
            s.connect(os.path.join(self.state, worker + ".sock"))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: worker\r\n\r\n")
            data = b""
            while b"}" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        head, _, body = data.decode().partition("\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    def metric(self, child, name):
        """One unlabelled metric of a child, from its own metrics port (None if it does not answer)."""
        url = json.load(open(os.path.join(self.state, "metrics.json")))[child]
        try:
            text = requests.get(url, timeout=1).text
        except requests.RequestException:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def log_text(self):
        self.log.flush()
        return open(self.log_path).read()

    def redis(self, *args):
        out = subprocess.run(["redis-cli", "-s", os.path.join(self.state, "redis.sock"), "--raw"] + list(args),
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def stop(self):
        if self in LIVE:
            LIVE.remove(self)
        if self.proc.poll() is None:
            self.resume_launcher()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the process group (children included) goes too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture
def deployment(users_file):
    d = Deployment(users_file)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def shared_deployment(users_file):
    """One deployment for a whole module of tests that leave no state behind (hostile input)."""
    d = Deployment(users_file, extra_args=["--msg-burst", "1000", "--msg-per-second", "1000"])
    yield d
    d.stop()


@pytest.fixture
def make_deployment(users_file):
    """For tests that need other flags: make_deployment(workers=3, extra_args=[...])."""
    made = []

    def make(**kw):
        d = Deployment(users_file, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
