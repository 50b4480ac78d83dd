"""The shipped demo accounts (admin/password123, team_member/securechat456) run only as a demo."""
import os
import subprocess
import tempfile

import requests

from conftest import BIN, ROOT, Deployment, free_port, password_for


def test_launcher_refuses_demo_accounts_unless_told_it_is_a_demo():
    state = tempfile.mkdtemp(prefix="sc-demo-")
    out = subprocess.run([os.path.join(BIN, "securechat"), "run", "--state-dir", state, "--port", str(free_port()),
                          "--users-file", os.path.join(ROOT, "users.json")], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "demo accounts" in out.stderr and "admin" in out.stderr and "team_member" in out.stderr
    assert "--allow-demo-users" in out.stderr
    assert "started" not in out.stderr  # no child was started
    assert not os.path.exists(os.path.join(state, "redis.sock"))


def test_gateway_alone_refuses_demo_accounts(deployment):
    tls = os.path.join(deployment.state, "tls")
    out = subprocess.run([os.path.join(BIN, "securechat-gateway"), "--port", str(free_port()), "--host", "127.0.0.1",
                          "--cert", os.path.join(tls, "cert.pem"), "--key", os.path.join(tls, "key.pem"),
                          "--users-file", os.path.join(ROOT, "users.json"), "--web-dir", os.path.join(ROOT, "web"),
                          "--state-dir", deployment.state], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "demo accounts" in out.stderr and "admin" in out.stderr


def test_a_demo_says_so_and_a_real_deployment_does_not(deployment):
    health = requests.get(deployment.base + "/healthz", verify=deployment.ca, timeout=5).json()
    assert health["demo_users"] is True
    assert "DEMO: accounts with published passwords can log in" in deployment.log_text()
    # A users file without the demo accounts (or with their passwords changed) needs no flag.
    d = tempfile.mkdtemp(prefix="sc-real-users-")
    path = os.path.join(d, "users.json")
    for name, password in [("alice", password_for("alice")), ("admin", "a-better-password-than-that")]:
        subprocess.run([os.path.join(BIN, "securechat"), "users", "add", name, "--users-file", path],
                       input=password + "\n", text=True, check=True, capture_output=True)
    real = Deployment(path, allow_demo=False)
    try:
        health = requests.get(real.base + "/healthz", verify=real.ca, timeout=5).json()
        assert health["status"] == "ok" and "demo_users" not in health
        assert "DEMO" not in real.log_text()
        assert real.login("alice").cookies.get("__Host-sc_session")
    finally:
        real.stop()
