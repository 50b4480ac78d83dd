"""Failure is normal: faults injected into real processes, with outcomes asserted."""
import asyncio
import json
import signal
import socket
import ssl
import time

import requests
import websockets

from conftest import wait_until
from resilient import ResilientClient, everyone_has, stop_all, wait_until as await_until
from wsclient import Client, id_key, run

# Senders here go faster than the default per-user limit.
FAST = ["--msg-burst", "1000", "--msg-per-second", "1000"]


def test_worker_killed_under_load_loses_and_repeats_nothing(make_deployment):
    d = make_deployment(extra_args=FAST)
    senders = [ResilientClient(d, d.login(n), n) for n in ("alice", "bob", "carol")]
    receivers = [ResilientClient(d, d.login("dave"), "dave-%d" % i) for i in range(4)]
    victim_pid = d.pid_of("worker-1")

    async def scenario():
        clients = senders + receivers
        tasks = [asyncio.create_task(c.run()) for c in clients]
        await await_until(lambda: all(c.live.is_set() for c in clients), 10, "all clients live")
        on_victim = [c for c in clients if c.workers[-1] == "worker-1"]
        assert on_victim, "nobody landed on worker-1"

        async def traffic(c):
            for i in range(40):
                await c.send("%s says %d" % (c.name, i))
                await asyncio.sleep(0.025)
        load = [asyncio.create_task(traffic(s)) for s in senders]
        # Kill mid-traffic: once some messages are through.
        await await_until(lambda: sum(len(s.acked) for s in senders) >= 15, 10, "traffic flowing")
        d.kill("worker-1")
        await asyncio.gather(*load)
        await await_until(lambda: all(not s.pending for s in senders), 20, "every send acknowledged")
        acked = sorted({i for s in senders for i in s.acked.values()}, key=id_key)
        assert len(acked) == 120
        await everyone_has(clients, acked, timeout=20)
        for c in on_victim:
            assert len(c.workers) >= 2               # it reconnected after the kill
        await stop_all(clients, tasks)

    run(scenario())
    # The launcher restarted the worker; the coordinator routes to both again.
    wait_until(lambda: d.pid_of("worker-1") not in (None, victim_pid), 15, what="worker-1 restarted")
    wait_until(d.healthy, 15, what="two workers live again")


def test_lost_subscription_is_refilled_from_the_stream(make_deployment):
    d = make_deployment(extra_args=FAST)
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a = await Client.connect(d, alice)
        b = await Client.connect(d, bob)
        ids, statuses = [], set()
        for i in range(20):
            # Cut every worker's subscription again and again while messages flow.
            d.redis("CLIENT", "KILL", "TYPE", "pubsub")
            statuses.add(d.worker_health(b.worker)[0])
            ids.append((await a.send_text("during outage %d" % i, ref="g%d" % i))["id"])
            statuses.add(d.worker_health(b.worker)[0])
        got = []
        while len(got) < len(ids):
            f = await b.wait_for(lambda f: f["type"] == "message", timeout=10)
            got.append(f["id"])
        assert got == ids                               # every one, once, in order, without a sync
        assert 503 in statuses                          # the health check showed the outage
        wait_until(lambda: d.worker_health(b.worker)[0] == 200, 10, what="worker healthy again")
        status, body = d.worker_health(b.worker)
        assert body["subscribed"] is True and body["ready"] is True and body["store"] is True
        await a.close()
        await b.close()

    run(scenario())
    assert "relayed messages missed while unsubscribed" in d.log_text()


def test_coordinator_restart_keeps_chat_and_restores_presence(make_deployment):
    d = make_deployment()
    alice, bob, carol = d.login("alice"), d.login("bob"), d.login("carol")

    async def scenario():
        a = await Client.connect(d, alice)
        b = await Client.connect(d, bob)
        online = set(a.welcome["online"])

        def track(f):
            if f["type"] == "presence":
                (online.add if f["online"] else online.discard)(f["user"])
            return False

        # The gateway has the worker list it routes on while the coordinator is away.
        wait_until(lambda: requests.get(d.base + "/healthz", verify=d.ca).json()["workers_cached"] == 2, 5,
                   what="gateway's worker list")
        d.pause_launcher()
        d.kill("coordinator")
        # Meanwhile chat goes on: sends are limited locally, new streams still find a worker.
        ack = await a.send_text("while the coordinator is away", ref="away")
        assert ack["type"] == "ack"
        c = await Client.connect(d, carol)
        await b.close()
        start = time.monotonic()
        d.resume_launcher()
        deadline = time.monotonic() + 10
        while online != {"alice", "carol"} and time.monotonic() < deadline:
            try:
                await a.wait_for(track, timeout=0.2)
            except AssertionError:
                pass
        assert online == {"alice", "carol"}, online
        converged = time.monotonic() - start
        assert converged < 10
        await a.close()
        await c.close()

    run(scenario())
    log = d.log_text()
    # Counted: the worker that served the send during the outage decided locally at least once.
    assert sum(d.worker_health(w)[1]["local_rate_decisions"] for w in ("worker-1", "worker-2")) >= 1
    fallbacks = log.count("rate limits decided locally")
    assert 1 <= fallbacks <= 3   # logged once per process that fell back
    assert "presence settled; snapshot sent to workers" in log


def test_redis_down_past_the_hold_gives_clear_errors_then_everything_is_back(make_deployment):
    # A short hold: a message is tried again for 0.4 s, then answered `unavailable`.
    d = make_deployment(extra_args=["--redis-hold-ms", "400"])
    alice = d.login("alice")

    async def scenario():
        a = await Client.connect(d, alice)
        before = await a.send_text("before the outage", ref="pre")
        assert before["type"] == "ack"
        redis_gone_for(d, a.worker)
        # Sends and logins get a clear temporary error; nothing crashes. The send was held first.
        sent = time.monotonic()
        err = await a.send_text("during the outage", ref="during")
        assert err["type"] == "error" and err["code"] == "unavailable" and err["retry_after_ms"] > 0
        assert time.monotonic() - sent >= 0.4
        r = requests.post(d.base + "/api/login", json={"username": "bob", "password": "pw-bob-123456"}, verify=d.ca)
        assert r.status_code == 503 and r.json()["error"] == "unavailable"
        assert requests.get(d.base + "/healthz", verify=d.ca).status_code == 503
        d.resume_launcher()
        wait_until(d.healthy, 20, what="healthy after redis restart")
        # The retried send is stored once; the session and the history survived.
        again = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            again = await a.send_text("during the outage", ref="during")
            if again["type"] == "ack":
                break
            await asyncio.sleep(0.2)
        assert again["type"] == "ack"
        assert alice.get(d.base + "/api/me").json() == {"username": "alice"}
        b = await Client.connect(d, d.login("bob"))
        assert [m["id"] for m in b.welcome["history"]][-2:] == [before["id"], again["id"]]
        await a.close()
        await b.close()

    run(scenario())
    assert sum(d.metric(w, "securechat_store_holds_expired_total") or 0 for w in ("worker-1", "worker-2")) >= 1
    for child in ("worker-1", "worker-2", "gateway", "coordinator"):
        assert d.pid_of(child), child + " is gone"


def test_a_message_sent_while_redis_restarts_is_held_and_acknowledged_not_refused(make_deployment):
    # A hold longer than any restart here takes, so the test does not depend on the machine's speed.
    d = make_deployment(extra_args=["--redis-hold-ms", "20000"])
    alice = d.login("alice")

    async def scenario():
        a = await Client.connect(d, alice)
        first = await a.send_text("before the restart")
        assert first["type"] == "ack"
        redis_gone_for(d, a.worker)
        # Without a ref a message is not held (a try that reached Redis could be stored twice):
        # it is refused at once, well inside the hold.
        sent = time.monotonic()
        await a.send({"type": "send", "text": "no ref, during the restart"})
        err = await a.wait_for(lambda f: f["type"] == "error", timeout=15)
        assert err["code"] == "unavailable" and "ref" not in err
        # Nor with an empty ref, which the store step does not deduplicate either.
        await a.send({"type": "send", "text": "empty ref, during the restart", "ref": ""})
        err = await a.wait_for(lambda f: f["type"] == "error", timeout=15)
        assert err["code"] == "unavailable" and not err.get("ref")
        assert time.monotonic() - sent < 15
        # With a ref it is held while Redis is down, and stored once it is back: an ack, no error.
        await a.send({"type": "send", "text": "during the restart", "ref": "held-1"})
        await a.send({"type": "send", "text": "right after it", "ref": "held-2"})
        d.resume_launcher()
        replies = [await a.wait_for(lambda f: f.get("ref") == r, timeout=25) for r in ("held-1", "held-2")]
        assert [f["type"] for f in replies] == ["ack", "ack"], replies
        assert id_key(first["id"]) < id_key(replies[0]["id"]) < id_key(replies[1]["id"])
        # Each is stored once, in the order sent. The store connection can be back before the
        # workers' subscriptions are, and until then they are left out of routing (a new
        # connection is refused 503): wait for both to be routable again.
        wait_until(d.healthy, 20, what="both workers routable after the restart")
        b = await Client.connect(d, d.login("bob"))
        texts = [m["text"] for m in b.welcome["history"]]
        assert texts[-3:] == ["before the restart", "during the restart", "right after it"], texts
        await a.close()
        await b.close()

    run(scenario())
    assert sum(d.metric(w, "securechat_store_retries_total") or 0 for w in ("worker-1", "worker-2")) >= 1
    assert sum(d.metric(w, "securechat_store_holds_expired_total") or 0 for w in ("worker-1", "worker-2")) == 0


def test_a_message_no_replica_confirms_is_refused_at_once_and_says_why(make_deployment):
    # The launcher's Redis has no replica, so every WAIT runs out. Such a message is not held
    # (its WAIT already waited, and WAITs queue on one connection): refused at once, saying why.
    d = make_deployment(extra_args=["--redis-wait-replicas", "1", "--redis-wait-ms", "100", "--redis-hold-ms", "20000"])
    alice = d.login("alice")

    async def scenario():
        a = await Client.connect(d, alice)
        sent = time.monotonic()
        err = await a.send_text("nobody copies this", ref="w-1")
        assert err["type"] == "error" and err["code"] == "unavailable", err
        assert err["message"] == "not yet confirmed by a replica; retry" and err["retry_after_ms"] > 0
        assert time.monotonic() - sent < 15   # well inside the 20 s hold
        await a.close()

    run(scenario())
    assert sum(d.metric(w, "securechat_store_retries_total") or 0 for w in ("worker-1", "worker-2")) == 0


def redis_gone_for(d, worker):
    """Kills Redis (the launcher paused, so it stays down) and waits until `worker` has seen it go
    on its subscription and its command connection."""
    d.pause_launcher()
    d.kill("redis")

    def seen():
        status, body = d.worker_health(worker)
        return status == 503 and body["subscribed"] is False and body["store"] is False
    wait_until(seen, 15, what="the worker seeing redis gone")


def metric_now(d, child, name):
    """A metric's value, polled until the child answers (a scrape that timed out gives None)."""
    got = []

    def answered():
        value = d.metric(child, name)
        if value is not None:
            got.append(value)
        return value is not None
    wait_until(answered, 10, what=name + " answered")
    return got[-1]


def test_a_sync_or_history_during_a_redis_restart_is_held_and_answered(make_deployment):
    # Reads are held like messages with a ref (repeating a read is safe): a client that
    # reconnects and asks for what it missed while Redis restarts gets it, not an error.
    d = make_deployment(extra_args=["--redis-hold-ms", "20000"])
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a = await Client.connect(d, alice)
        b = await Client.connect(d, bob)
        first = await a.send_text("one")
        second = await a.send_text("two")
        await b.wait_for(lambda f: f["type"] == "message" and f["id"] == second["id"])
        b.pending.clear()
        redis_gone_for(d, b.worker)
        await b.send({"type": "sync", "since": first["id"]})
        # The replay's read failed and is being tried again while Redis is down.
        wait_until(lambda: (d.metric(b.worker, "securechat_store_retries_total") or 0) >= 1, 15,
                   what="the sync's read held")
        d.resume_launcher()
        synced = await b.wait_for(lambda f: f["type"] in ("synced", "error"), timeout=25)
        assert synced["type"] == "synced" and synced["recovered"] is True, synced
        assert [f["id"] for f in b.pending if f["type"] == "message"] == [second["id"]], b.pending
        # So is a `history` request, through a second restart.
        wait_until(d.healthy, 20, what="both workers routable after the restart")
        retries = metric_now(d, b.worker, "securechat_store_retries_total")
        redis_gone_for(d, b.worker)
        await b.send({"type": "history", "room": "lobby", "limit": 5, "ref": "h"})
        wait_until(lambda: (d.metric(b.worker, "securechat_store_retries_total") or 0) > retries, 15,
                   what="the history read held")
        d.resume_launcher()
        page = await b.wait_for(lambda f: f.get("ref") == "h", timeout=25)
        assert page["type"] == "history", page
        assert [m["id"] for m in page["messages"]][-2:] == [first["id"], second["id"]]
        await a.close()
        await b.close()

    run(scenario())
    assert sum(d.metric(w, "securechat_store_holds_expired_total") or 0 for w in ("worker-1", "worker-2")) == 0


def test_sigterm_drains_a_worker_with_1012(make_deployment):
    d = make_deployment()
    sessions = [d.login("alice") for _ in range(4)]

    async def scenario():
        clients = [await Client.connect(d, s) for s in sessions]
        on_w1 = [c for c in clients if c.worker == "worker-1"]
        assert len(on_w1) == 2
        d.kill("worker-1", signal.SIGTERM)
        codes = [await c.closed_code() for c in on_w1]
        assert codes == [1012, 1012]
        # They reconnect at once and find a worker.
        again = await Client.connect(d, sessions[0])
        assert again.worker
        await again.close()
        for c in clients:
            await c.close()

    run(scenario())


def test_sigterm_to_launcher_drains_everything_in_bounded_time(make_deployment):
    d = make_deployment()
    sessions = [d.login("alice") for _ in range(6)]

    async def scenario():
        clients = [await Client.connect(d, s) for s in sessions]
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        codes = [await c.closed_code(timeout=15) for c in clients]
        assert codes == [1012] * 6
        return start

    start = run(scenario())
    d.proc.wait(timeout=20)
    assert time.monotonic() - start < 20
    assert d.proc.returncode == 0
    for child in ("worker-1", "worker-2", "gateway", "coordinator", "redis"):
        assert d.pid_of(child) is None, child + " still running"


def test_slow_reader_is_cut_off_with_4008_and_others_keep_up(make_deployment):
    # 2,500 sends as fast as the client can: no rate limit in the way, however fast the server.
    d = make_deployment(extra_args=["--msg-burst", "100000", "--msg-per-second", "100000", "--max-queued-frames", "64"])
    alice, bob, slow = d.login("alice"), d.login("bob"), d.login("carol")

    async def scenario():
        # The slow client reads nothing: a small receive buffer and a one-frame queue in the library.
        sock = socket.create_connection(("127.0.0.1", d.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        lazy = await websockets.connect("wss://127.0.0.1:%d/ws" % d.port, sock=sock, ssl=d.ssl_context(),
                                        server_hostname="127.0.0.1", max_queue=1, ping_interval=None,
                                        additional_headers={"Cookie": "__Host-sc_session=" + slow.cookies["__Host-sc_session"]})
        a = await Client.connect(d, alice)
        b = await Client.connect(d, bob)
        text = "y" * 2000
        count = 2500

        async def collect(client, want_acks):
            """Reads until `count` messages (and, for the sender, `count` acks) arrived."""
            acks, messages = [], []
            while len(messages) < count or (want_acks and len(acks) < count):
                f = await client.next_frame(timeout=30)
                assert f["type"] != "error", f
                if f["type"] == "ack":
                    acks.append(f["id"])
                elif f["type"] == "message":
                    messages.append(f["id"])
            return acks, messages

        # alice and bob read as fast as they can while alice sends.
        mine = asyncio.create_task(collect(a, True))
        theirs = asyncio.create_task(collect(b, False))
        for i in range(count):
            await a.send({"type": "send", "text": text, "ref": "f%d" % i})
            if i % 100 == 99:
                await asyncio.sleep(0)
        sent, own = await mine
        _, got = await theirs
        assert got == sent                       # the fast reader got everything, in order
        assert own == sent
        wait_until(lambda: "client too slow; closing" in d.log_text(), 10, what="the slow client cut off")
        # The slow one, reading at last, finds its connection closed with 4008.
        code = None
        try:
            while True:
                await asyncio.wait_for(lazy.recv(), 15)
        except websockets.ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
        assert code == 4008
        await a.close()
        await b.close()

    run(scenario())
    assert "client too slow; closing" in d.log_text()


def test_half_open_websocket_is_reclaimed_by_keepalive(make_deployment):
    d = make_deployment(extra_args=["--ping-seconds", "0.5"])
    alice, ghost = d.login("alice"), d.login("bob")

    async def scenario():
        a = await Client.connect(d, alice)
        # bob upgrades and then goes silent: never reads, never answers a ping.
        raw = ssl.create_default_context(cafile=d.ca).wrap_socket(
            socket.create_connection(("127.0.0.1", d.port)), server_hostname="127.0.0.1")
        raw.sendall(("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "Cookie: __Host-sc_session=%s\r\n\r\n" % (d.port, ghost.cookies["__Host-sc_session"])).encode())
        assert b"101" in raw.recv(1024)
        await a.wait_for(lambda f: f == {"type": "presence", "user": "bob", "online": True})
        await a.wait_for(lambda f: f == {"type": "presence", "user": "bob", "online": False}, timeout=10)
        raw.close()
        await a.close()

    run(scenario())
    assert "no answer to pings; closing" in d.log_text()


def test_slowloris_and_silent_connections_are_closed(make_deployment):
    d = make_deployment(extra_args=["--request-timeout-seconds", "1"])
    ctx = ssl.create_default_context(cafile=d.ca)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", d.port)), server_hostname="127.0.0.1")
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    start = time.monotonic()
    closed = False
    while time.monotonic() - start < 8:
        try:
            s.sendall(b"X-Drip: 1\r\n")       # a header line every 200 ms, never finishing
            s.settimeout(0.2)
            if s.recv(1) == b"":
                closed = True
                break
        except socket.timeout:
            continue
        except (ConnectionError, ssl.SSLError, OSError):
            closed = True
            break
    assert closed and time.monotonic() - start < 5
    # A TCP connection that never starts TLS is closed too.
    plain = socket.create_connection(("127.0.0.1", d.port))
    plain.settimeout(5)
    t0 = time.monotonic()
    assert plain.recv(1) == b""
    assert time.monotonic() - t0 < 4
    # The gateway still serves everyone else.
    assert requests.get(d.base + "/healthz", verify=d.ca).status_code == 200


def test_logout_while_a_workers_subscription_is_down_still_closes_the_socket(make_deployment):
    d = make_deployment(workers=1)
    victim, other = d.login("alice"), d.login("bob")

    async def scenario():
        a = await Client.connect(d, victim)
        b = await Client.connect(d, other)
        # The worker's subscription goes down and cannot come back (Redis now wants a password
        # the worker does not have); connections already made stay authenticated.
        d.redis("CONFIG", "SET", "requirepass", "only-for-this-test")
        try:
            d.redis("-a", "only-for-this-test", "--no-auth-warning", "CLIENT", "KILL", "TYPE", "pubsub")
            wait_until(lambda: "redis refused the subscription" in d.log_text(), 10, what="the subscription refused")
            # The logout is published while nobody listens.
            r = victim.post(d.base + "/api/logout", headers={"Origin": d.origin})
            assert r.status_code == 200
        finally:
            d.redis("-a", "only-for-this-test", "--no-auth-warning", "CONFIG", "SET", "requirepass", "")
        # Resubscribed, the worker looks at its streams' sessions again.
        assert await a.closed_code(timeout=20) == 4001
        ack = await b.send_text("bob is still here")
        assert ack["type"] == "ack"
        await b.close()

    run(scenario())


def test_a_large_sync_is_paced_by_its_reader(make_deployment):
    d = make_deployment(extra_args=["--msg-burst", "100000", "--msg-per-second", "100000"])
    alice, bob, carol = d.login("alice"), d.login("bob"), d.login("carol")
    # 1,000 messages of 2,000 four-byte characters: 8 MB of history, 8 times a client's queue
    # (1 MiB) plus more than the kernel's socket buffers hold. Before the replay was paced,
    # a client that did not keep up with it was cut off with 4008, and again at its next sync.
    count, text = 1000, "\U0001F600" * 2000

    async def scenario():
        a = await Client.connect(d, alice)
        # The sender reads while it sends (its own queue is bounded too).
        last_ack = asyncio.create_task(a.wait_for(lambda f: f["type"] == "ack" and f.get("ref") == "big%d" % (count - 1),
                                                  timeout=60))
        for i in range(count):
            await a.send({"type": "send", "text": text, "ref": "big%d" % i})
        await last_ack

        async def reader(session):
            sock = socket.create_connection(("127.0.0.1", d.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            return await websockets.connect("wss://127.0.0.1:%d/ws" % d.port, sock=sock, ssl=d.ssl_context(),
                                            server_hostname="127.0.0.1", max_queue=1, ping_interval=None, max_size=2 ** 22,
                                            additional_headers={"Cookie": "__Host-sc_session=" + session.cookies["__Host-sc_session"]})

        async def replay(ws, pause_first, per_message):
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "sync", "since": "0-0"}))
            await asyncio.sleep(pause_first)   # the client under test not reading: its behaviour, not a wait
            replayed = 0
            while True:
                f = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if f["type"] == "synced":
                    return replayed
                if f["type"] == "message" and f["text"] == text:
                    replayed += 1
                    await asyncio.sleep(per_message)

        # One asks for all of it and reads nothing for 3 s; one reads it at about 3 MB/s, far
        # slower than the replay could go. Both get every message, and nobody is cut off.
        lazy, slow = await reader(carol), await reader(bob)
        got = await asyncio.gather(replay(lazy, 3, 0), replay(slow, 0, 0.003))
        assert got == [count, count]
        assert "client too slow; closing" not in d.log_text()
        await lazy.close()
        await slow.close()
        await a.close()

    run(scenario())


def test_an_external_redis_over_tls_with_an_acl_user_and_no_default_user(users_file, tmp_path):
    import subprocess
    from conftest import Deployment, free_port, wait_listening
    # Redis as an operator would run it across hosts: TLS only, the default user off, one ACL
    # user for SecureChat. The certificate is its own CA here.
    cert, key = str(tmp_path / "redis-cert.pem"), str(tmp_path / "redis-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file", cert,
                              "--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no",
                              "--dir", str(tmp_path), "--save", "", "--appendonly", "no",
                              "--user", "default", "off",
                              "--user", "securechat", "on", ">a-redis-password-for-this-test", "~sc:*", "&sc:*",
                              "+@all", "-@dangerous", "+info"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, 10, what="redis listening")
        d = Deployment(users_file, extra_args=["--redis-url", "rediss://127.0.0.1:%d" % port, "--redis-tls-ca", cert,
                                               "--redis-user", "securechat",
                                               "--redis-password", "a-redis-password-for-this-test"])
        try:
            alice, bob = d.login("alice"), d.login("bob")

            async def chat():
                a = await Client.connect(d, alice)
                b = await Client.connect(d, bob)
                ack = await a.send_text("through TLS and an ACL user")
                assert ack["type"] == "ack"
                assert (await b.wait_for(lambda f: f["type"] == "message"))["id"] == ack["id"]
                await a.close()
                await b.close()
            run(chat())
            assert "a-redis-password-for-this-test" not in d.log_text()
        finally:
            d.stop()
    finally:
        redis.terminate()
        redis.wait(timeout=10)
