"""Key sharing in a 50-member encrypted room (docs/benchmarks.md, "End-to-end encryption"):
the web client in Debian's headless Chromium is bench0, the owner of a private encrypted
room of 50; bench1..bench49 and bench50 are WebSocket clients here with real device keys
(X25519 and Ed25519, signed by an Ed25519 account key, as the web client makes them), each
recording when its key shares arrive. Measured, each --runs times:

- join:     bench50 is invited; the time from the invite until bench50's device holds the
            room's key (the browser shares its chain when it hears of the new member);
- rotation: bench50 is removed; the next message starts a new chain and shares it with
            the 49 other members' devices before it goes: the time from the send until the
            message's ack and until the last of the 49 shares arrived;
- steady:   a message on a chain everyone has (no shares): the time until its ack;
- plain:    the same message in a plain private room of the same 50: the reference.

    .venv/bin/python Benchmarks/e2ee_members.py [--runs 5]

It starts its own deployment (the launcher, 2 workers) and stops it."""
import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import sys
import threading
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "IntegrationTests"))
sys.path.insert(0, HERE)
import conftest  # noqa: E402
from bench import FAST, PASSWORD, make_users  # noqa: E402
from wsclient import Client  # noqa: E402

MEMBERS = 50


def b64(b):
    return base64.b64encode(b).decode()


def raw(public):
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def device_object(user, n):
    """A device as the web client publishes it: its keys signed by the user's account key."""
    account = Ed25519PrivateKey.generate()
    d = {"id": "bench-device-%d" % n, "dh_alg": "X25519", "dh": b64(raw(X25519PrivateKey.generate().public_key())),
         "sig_alg": "Ed25519", "sig": b64(raw(Ed25519PrivateKey.generate().public_key())),
         "account_alg": "Ed25519", "account": b64(raw(account.public_key()))}
    signed = "\n".join(["sc-device-v1", user, d["id"], d["dh_alg"], d["dh"], d["sig_alg"], d["sig"], d["account_alg"], d["account"]])
    d["asig"] = b64(account.sign(signed.encode()))
    return d


class Members:
    """bench1..bench50 connected, each with a device, recording each to_device's arrival."""

    def __init__(self, d):
        self.d = d
        self.arrivals = {}      # user -> [monotonic times of to_device frames]
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), self.loop).result(120)

    async def start(self):
        self.clients = []
        for n in range(1, MEMBERS + 1):
            user = "bench%d" % n
            c = await Client.connect(self.d, self.d.login(user, PASSWORD))
            await c.send({"type": "device", "device": device_object(user, n), "ref": "dev"})
            await c.wait_for(lambda f: f.get("ref") == "dev")
            self.arrivals[user] = []
            self.clients.append((user, c))
        for user, c in self.clients:
            asyncio.ensure_future(self.read(user, c))

    async def read(self, user, c):
        while True:
            try:
                f = json.loads(await c.ws.recv())
            except Exception:
                return
            if f.get("type") == "to_device":
                self.arrivals[user].append(time.monotonic())

    def count(self, user):
        return len(self.arrivals[user])

    def wait(self, predicate, timeout=60):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for key shares")
            time.sleep(0.002)

    def close(self):
        async def go():
            for _, c in self.clients:
                await c.ws.close()
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


ASK = """
  var done = arguments[arguments.length - 1];
  SecureChatPage.request(arguments[0]).then(function (r) { done(r); });"""
SEND_ENCRYPTED = """
  var done = arguments[arguments.length - 1], room = arguments[0];
  var t0 = performance.now();
  SecureChatPage.keys.encrypt(room, {text: arguments[1]}).then(function (env) {
    var t1 = performance.now();
    return SecureChatPage.request({type: 'send', room: room, e2ee: env, ref: 'b' + Math.random()}).then(function (ack) {
      var k = SecureChatPage.keys.timings;
      done({ack: ack.type, encrypt_ms: t1 - t0, total_ms: performance.now() - t0, timing: k[k.length - 1]});
    });
  });"""
REMOVE = """
  var done = arguments[arguments.length - 1];
  SecureChatPage.removeMember(arguments[0], arguments[1]).then(function (r) { done(r); });"""
SEND_PLAIN = """
  var done = arguments[arguments.length - 1], room = arguments[0];
  var t0 = performance.now();
  SecureChatPage.request({type: 'send', room: room, text: arguments[1], ref: 'p' + Math.random()}).then(function (ack) {
    done({ack: ack.type, total_ms: performance.now() - t0});
  });"""


def median(xs):
    return round(statistics.median(xs), 2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    users = make_users(MEMBERS + 1)
    d = conftest.Deployment(users, workers=2, extra_args=FAST + ["--request-burst", "100000", "--requests-per-second", "100000"])
    browser = None
    members = None
    try:
        members = Members(d)
        o = webdriver.ChromeOptions()
        for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors"]:
            o.add_argument(a)
        o.binary_location = shutil.which("chromium")
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)
        browser.set_script_timeout(120)
        browser.get(d.base + "/")
        browser.find_element(By.ID, "username").send_keys("bench0")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login-button").click()
        WebDriverWait(browser, 30, 0.05).until(lambda x: x.execute_script(
            "return !!(window.SecureChatPage && SecureChatPage.keys.state === 'ready')"))
        ask = lambda frame: browser.execute_async_script(ASK, frame)
        for name, enc in (("big", True), ("big-plain", False)):
            r = ask({"type": "create_room", "name": name, "kind": "private", "encrypted": enc})
            assert r["type"] == "room_added", r
            for n in range(1, MEMBERS):
                r = ask({"type": "invite", "room": name, "user": "bench%d" % n})
                assert r["type"] == "ok", r
        # Reloaded, so the page knows the rooms made through its request function (as after a
        # create in its dialog) and follows their members.
        browser.refresh()
        WebDriverWait(browser, 30, 0.05).until(lambda x: x.execute_script(
            "return !!(window.SecureChatPage && SecureChatPage.keys.state === 'ready') && "
            "!!document.querySelector('#sidebar button[data-room=\"big\"]')"))
        first = browser.execute_async_script(SEND_ENCRYPTED, "big", "first")
        assert first["ack"] == "ack" and first["timing"]["shared"] == MEMBERS - 1, first
        out = {"members": MEMBERS, "first_message": first, "join": [], "rotation": [], "steady": [], "plain": []}
        for _ in range(args.runs):
            # join: bench50 invited, until its device has the key.
            before = members.count("bench%d" % MEMBERS)
            t0 = time.monotonic()
            r = ask({"type": "invite", "room": "big", "user": "bench%d" % MEMBERS})
            assert r["type"] == "ok", r
            members.wait(lambda: members.count("bench%d" % MEMBERS) > before)
            out["join"].append((members.arrivals["bench%d" % MEMBERS][-1] - t0) * 1000)
            # rotation: bench50 removed; the next message shares a new chain with the 49 left.
            r = browser.execute_async_script(REMOVE, "big", "bench%d" % MEMBERS)   # as the Remove button does
            assert r["type"] == "ok", r
            counts = {u: members.count(u) for u in members.arrivals}
            t0 = time.monotonic()
            sent = browser.execute_async_script(SEND_ENCRYPTED, "big", "after removal")
            assert sent["ack"] == "ack" and sent["timing"]["rotated"] == "member left" and sent["timing"]["shared"] == MEMBERS - 1, sent
            others = ["bench%d" % n for n in range(1, MEMBERS)]
            members.wait(lambda: all(members.count(u) > counts[u] for u in others))
            last = max(members.arrivals[u][-1] for u in others)
            assert members.count("bench%d" % MEMBERS) == counts["bench%d" % MEMBERS], "the removed member got the new key"
            out["rotation"].append({"ack_ms": sent["total_ms"], "last_share_ms": (last - t0) * 1000})
            steady = browser.execute_async_script(SEND_ENCRYPTED, "big", "steady")
            assert steady["timing"]["shared"] == 0 and not steady["timing"]["rotated"], steady
            out["steady"].append(steady["total_ms"])
            out["plain"].append(browser.execute_async_script(SEND_PLAIN, "big-plain", "steady")["total_ms"])
        summary = {
            "join_ms_median": median(out["join"]),
            "rotation_ack_ms_median": median([x["ack_ms"] for x in out["rotation"]]),
            "rotation_last_share_ms_median": median([x["last_share_ms"] for x in out["rotation"]]),
            "steady_encrypted_ack_ms_median": median(out["steady"]),
            "plain_ack_ms_median": median(out["plain"]),
        }
        summary["rotation_vs_plain"] = round(summary["rotation_ack_ms_median"] / summary["plain_ack_ms_median"], 1)
        summary["steady_vs_plain"] = round(summary["steady_encrypted_ack_ms_median"] / summary["plain_ack_ms_median"], 2)
        summary["join_vs_plain"] = round(summary["join_ms_median"] / summary["plain_ack_ms_median"], 1)
        print(json.dumps({"runs": out, "summary": summary}, default=lambda x: round(x, 2)))
        print(json.dumps(summary, sort_keys=True))
    finally:
        if browser:
            browser.quit()
        if members:
            members.close()
        d.stop()
        shutil.rmtree(os.path.dirname(users), ignore_errors=True)


if __name__ == "__main__":
    main()
