"""Two coordinators, one active and one standing by, elected through a lease in the real Redis
(`securechat run --coordinators 2`, real processes). The active one is killed, or paused: the
standby takes over, workers and gateways follow it, presence is exact again, a user's message
limit holds across the change, and a coordinator that wakes up from a pause serves nothing."""
import asyncio
import json
import os
import signal
import socket
import struct
import time

import requests

from conftest import wait_until
from wsclient import Client, run

COORDINATORS = ("coordinator-1", "coordinator-2")


def active_coordinators(d):
    return [c for c in COORDINATORS if d.metric(c, "securechat_coordinator_active") == 1]


def the_active_one(d):
    active = wait_until(lambda: active_coordinators(d) if len(active_coordinators(d)) == 1 else None, 15,
                        what="exactly one active coordinator")
    return active[0]


def hello(d, coordinator):
    """One `hello` on a link of our own to a coordinator's socket: its answer."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(os.path.join(d.state, coordinator + ".sock"))
        body = json.dumps({"request": {"id": 1, "_1": {"hello": {}}}}).encode()
        s.sendall(struct.pack(">I", len(body)) + body)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = s.recv(4096)
            assert chunk, "closed before answering"
            data += chunk
        return json.loads(data[4:4 + struct.unpack(">I", data[:4])[0]])["response"]["_1"]
    finally:
        s.close()


def worker_epochs(d):
    return {w: d.worker_health(w)[1]["coordinator_epoch"] for w in ("worker-1", "worker-2")}


def test_the_standby_takes_over_presence_is_exact_again_and_the_message_limit_holds(make_deployment):
    # Message limit: a burst of 5, then one a second (the defaults), decided by the coordinator.
    d = make_deployment(extra_args=["--coordinators", "2"])
    alice, bob, carol, dave = (d.login(n) for n in ("alice", "bob", "carol", "dave"))
    old = the_active_one(d)
    new = [c for c in COORDINATORS if c != old][0]
    old_epoch = d.metric(old, "securechat_coordinator_epoch")
    wait_until(lambda: requests.get(d.base + "/healthz", verify=d.ca).json()["workers_cached"] == 2, 10,
               what="the gateway's worker list")

    def guess():
        return requests.post(d.base + "/api/login", json={"username": "mallory", "password": "wrong"}, verify=d.ca).status_code

    # A guesser spends the login limit for one name from this address (5 a minute: each
    # failure moves the bucket 12 s on)...
    first = time.time()
    assert [guess() for _ in range(6)] == [401] * 5 + [429]

    def carried_until():
        words = d.redis("ZRANGE", "sc:coordinator:limits", "0", "-1", "WITHSCORES").split()
        scores = {words[i]: float(words[i + 1]) / 1000 for i in range(0, len(words) - 1, 2)}
        return next((v for k, v in scores.items() if k.startswith("loginUser:mallory|")), 0)

    # ...which the active coordinator writes to Redis with its renewals: wait for all five
    # failures there (a renewal between two guesses carries only those before it; a crash
    # then would lose the rest, as deploy/README.md says).
    wait_until(lambda: carried_until() >= first + 59, 5, what="the login limit in Redis")

    async def scenario():
        a = await Client.connect(d, alice)
        b = await Client.connect(d, bob)
        dv = await Client.connect(d, dave)
        online = set(a.welcome["online"])

        async def watch(until):
            while time.monotonic() < until:
                try:
                    f = await a.wait_for(lambda f: f["type"] == "presence", timeout=0.2)
                    (online.add if f["online"] else online.discard)(f["user"])
                except AssertionError:
                    pass

        # Dave sends as fast as answers come back (paced at 20 ms) for the whole run: before the
        # kill, with no coordinator, and after the takeover. Every ack is a cell the limit allowed.
        acks = []
        refused = []
        stop = {"at": None}

        async def spend():
            n = 0
            while stop["at"] is None or time.monotonic() < stop["at"]:
                n += 1
                r = await dv.send_text("spend %d" % n)
                (acks if r["type"] == "ack" else refused).append((time.monotonic(), r.get("code")))
                await asyncio.sleep(0.02)

        started = time.monotonic()
        spender = asyncio.ensure_future(spend())
        # The kill comes once dave has spent his burst and been refused (polled, with a deadline).
        deadline = time.monotonic() + 10
        while not (len(acks) >= 5 and refused):
            assert time.monotonic() < deadline, "dave never spent his burst: %d acks" % len(acks)
            await asyncio.sleep(0.02)
        d.pause_launcher()
        killed = time.monotonic()
        d.kill(old)
        # While there is no coordinator: bob leaves, carol arrives.
        await b.close()
        c = await Client.connect_retrying(d, carol)
        took_over = None
        exact = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (took_over is None or exact is None):
            await watch(time.monotonic() + 0.1)
            if took_over is None and d.metric(new, "securechat_coordinator_active") == 1:
                took_over = time.monotonic()
            if took_over is not None and exact is None and online == {"alice", "carol", "dave"}:
                exact = time.monotonic()
        assert took_over is not None, "the standby never took over"
        assert exact is not None, "presence never became exact: %r" % online
        # The successor continues the login limits where its predecessor left them: the guesser
        # is still refused, and someone else logs in at once.
        assert guess() == 429
        assert d.login("admin").cookies.get("__Host-sc_session")
        # Dave keeps spending for 6 s after the takeover: more than his burst's worth.
        stop["at"] = took_over + 6
        await spender
        ended = time.monotonic()
        for cl in (a, c, dv):
            await cl.close()
        return started, killed, took_over, exact, ended, acks, refused

    started, killed, took_over, exact, ended, acks, refused = run(scenario())
    d.resume_launcher()

    # The limit held over the whole run: within any window, at most burst + rate × length (one
    # cell of slack for where the window's edges fall between the client's clocks).
    times = [t for t, _ in acks]
    worst = max(sum(1 for t in times if s <= t <= e) - (5 + (e - s))
                for s in times for e in times if e >= s)
    assert worst <= 1, "the limit was exceeded by %.2f cells" % worst
    assert all(code == "rate_limited" for _, code in refused), set(code for _, code in refused)
    # ...and the service went on: dave was allowed again after the takeover.
    after = [t for t in times if t > took_over]
    assert len(after) >= 3, after
    # Everyone follows the new coordinator, under a newer epoch.
    new_epoch = d.metric(new, "securechat_coordinator_epoch")
    assert new_epoch > old_epoch
    wait_until(lambda: set(worker_epochs(d).values()) == {new_epoch}, 10, what="workers on the new epoch")
    # The killed one, restarted by the launcher, stands by.
    wait_until(lambda: d.metric(old, "securechat_coordinator_active") == 0, 20, what="the old coordinator back, standing by")
    assert active_coordinators(d) == [new]
    print("\nFIGURES coordinator killed: takeover %.2f s after the kill, presence exact %.2f s after the takeover "
          "(%.2f s after the kill); dave %d acks and %d refusals in %.1f s (limit allows %.1f), %d acks after the takeover"
          % (took_over - killed, exact - took_over, exact - killed, len(acks), len(refused), ended - started,
             5 + ended - started, len(after)))


def test_a_paused_coordinator_wakes_up_as_a_standby_and_serves_nothing(make_deployment):
    d = make_deployment(extra_args=["--coordinators", "2"])
    old = the_active_one(d)
    new = [c for c in COORDINATORS if c != old][0]
    old_epoch = d.metric(old, "securechat_coordinator_epoch")
    alice = d.login("alice")
    paused_at = time.monotonic()
    # SIGSTOP: no FIN, no RST, nothing; the process simply stops (a long GC, a VM migration).
    d.kill(old, signal.SIGSTOP)
    try:
        wait_until(lambda: d.metric(new, "securechat_coordinator_active") == 1, 15, what="the standby active")
        took_over = time.monotonic()
        new_epoch = d.metric(new, "securechat_coordinator_epoch")
        assert new_epoch > old_epoch
        # The workers' links to the paused one went unanswered; they moved on.
        wait_until(lambda: set(worker_epochs(d).values()) == {new_epoch}, 10, what="workers on the new epoch")
        followed = time.monotonic()
        wait_until(lambda: requests.get(d.base + "/healthz", verify=d.ca).json()["coordinator"], 10, what="the gateway on the new one")
    finally:
        d.kill(old, signal.SIGCONT)
    woke = time.monotonic()
    # It wakes up past its lease and answers as a standby from its first answer on.
    assert hello(d, old) == {"standby": {}}
    assert hello(d, new) == {"leader": {"epoch": int(new_epoch)}}
    wait_until(lambda: d.metric(old, "securechat_coordinator_active") == 0, 10, what="the woken coordinator stepped down")
    inactive = time.monotonic()
    # Its own log says why: the lease ran out by its clock.
    assert any("coordinator stepped down" in line and "coordinator.id=%s " % old in line and "reason=expired" in line
               for line in d.log_text().splitlines()), d.log_text()[-3000:]
    # And stays a standby: the lease is the other's. Watched for 3 s (a lease and a half).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert active_coordinators(d) == [new]
        assert set(worker_epochs(d).values()) == {new_epoch}
        time.sleep(0.2)

    async def chat():
        a = await Client.connect(d, alice)
        ack = await a.send_text("after the pause")
        assert ack["type"] == "ack", ack
        await a.close()

    run(chat())
    print("\nFIGURES coordinator paused: standby active %.2f s after the pause, workers following %.2f s after; "
          "the woken one inactive %.2f s after SIGCONT"
          % (took_over - paused_at, followed - paused_at, inactive - woke))
