"""The end-to-end contract of protocol.md against a real deployment."""
import asyncio
import hashlib
import json
import time

import requests
import websockets

from conftest import wait_until
from wsclient import Client, id_key, run


def test_message_reaches_clients_on_both_workers(deployment):
    alice, bob = deployment.login("alice"), deployment.login("bob")

    async def scenario():
        a = await Client.connect(deployment, alice)
        b = await Client.connect(deployment, bob)
        assert a.worker and b.worker and a.worker != b.worker, (a.worker, b.worker)
        ack = await a.send_text("  hello from alice  ", ref="m1")
        assert ack["type"] == "ack"
        got_a = await a.wait_for(lambda f: f["type"] == "message")
        got_b = await b.wait_for(lambda f: f["type"] == "message")
        for m in (got_a, got_b):
            assert m["id"] == ack["id"]
            assert m["from"] == "alice" and m["text"] == "hello from alice" and m["room"] == "lobby"
            assert m["ts"] == id_key(ack["id"])[0]
        await a.close()
        await b.close()

    run(scenario())


def test_presence_and_welcome_online_list(deployment):
    alice, bob = deployment.login("alice"), deployment.login("bob")

    async def scenario():
        a = await Client.connect(deployment, alice)
        assert "alice" in a.welcome["online"]
        b = await Client.connect(deployment, bob)
        assert b.welcome["online"] == ["alice", "bob"]
        assert b.welcome["user"] == "bob" and b.welcome["room"] == "lobby"
        await a.wait_for(lambda f: f == {"type": "presence", "user": "bob", "online": True})
        await b.close()
        await a.wait_for(lambda f: f == {"type": "presence", "user": "bob", "online": False})
        await a.close()

    run(scenario())


def test_login_failures_look_alike_and_are_limited(deployment):
    url = deployment.base + "/api/login"
    unknown = requests.post(url, json={"username": "nobody-here", "password": "x"}, verify=deployment.ca)
    wrong = requests.post(url, json={"username": "carol", "password": "wrong"}, verify=deployment.ca)
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.content == wrong.content
    assert wrong.json() == {"ok": False, "error": "invalid_credentials"}
    # carol has one failure already: four more are still 401, the sixth is 429.
    for _ in range(4):
        assert requests.post(url, json={"username": "carol", "password": "wrong"}, verify=deployment.ca).status_code == 401
    sixth = requests.post(url, json={"username": "carol", "password": "wrong"}, verify=deployment.ca)
    assert sixth.status_code == 429
    assert int(sixth.headers["Retry-After"]) >= 1
    assert sixth.json()["error"] == "rate_limited" and sixth.json()["retry_after"] >= 1
    # Another user from the same address is not locked out by carol's failures.
    assert requests.post(url, json={"username": "dave", "password": "pw-dave-123456"}, verify=deployment.ca).status_code == 200
    # Malformed bodies and wrong content types.
    assert requests.post(url, data="{", headers={"Content-Type": "application/json"}, verify=deployment.ca).status_code == 400
    assert requests.post(url, data="username=a", headers={"Content-Type": "application/x-www-form-urlencoded"},
                         verify=deployment.ca).status_code == 415


def test_websocket_needs_session_and_own_origin(deployment):
    alice = deployment.login("alice")
    url = "wss://127.0.0.1:%d/ws" % deployment.port

    async def status_of(headers):
        try:
            ws = await websockets.connect(url, ssl=deployment.ssl_context(), additional_headers=headers, open_timeout=10)
        except websockets.InvalidStatus as e:
            return e.response.status_code
        await ws.close()
        return 101

    cookie = {"Cookie": "__Host-sc_session=" + alice.cookies["__Host-sc_session"]}
    assert run(status_of({"Origin": deployment.origin})) == 401
    assert run(status_of(dict(cookie, Origin="https://evil.example"))) == 403
    assert run(status_of(dict(cookie, Origin="null"))) == 403
    assert run(status_of({"Cookie": "__Host-sc_session=" + "A" * 43, "Origin": deployment.origin})) == 401
    assert run(status_of(dict(cookie, Origin=deployment.origin))) == 101


def test_logout_ends_session_and_closes_its_sockets(deployment):
    first, second = deployment.login("alice"), deployment.login("alice")
    sid = first.cookies["__Host-sc_session"]
    key = "sc:session:" + hashlib.sha256(sid.encode()).hexdigest()
    assert deployment.redis("EXISTS", key) == "1"

    async def scenario():
        a1 = await Client.connect(deployment, first)
        a2 = await Client.connect(deployment, second)
        r = first.post(deployment.base + "/api/logout", headers={"Origin": deployment.origin})
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert await a1.closed_code() == 4001
        # The other session of the same user stays, and so does its socket.
        ack = await a2.send_text("still here")
        assert ack["type"] == "ack"
        await a2.close()

    run(scenario())
    assert deployment.redis("EXISTS", key) == "0"
    me = requests.get(deployment.base + "/api/me", cookies={"__Host-sc_session": sid}, verify=deployment.ca)
    assert me.status_code == 401 and me.json() == {"ok": False, "error": "unauthenticated"}
    assert second.get(deployment.base + "/api/me").json() == {"username": "alice"}
    assert first.post(deployment.base + "/api/logout").status_code == 401


def test_rate_limit_is_shared_across_workers(deployment):
    s1, s2 = deployment.login("alice"), deployment.login("alice")

    async def scenario():
        c1 = await Client.connect(deployment, s1)
        c2 = await Client.connect(deployment, s2)
        assert c1.worker != c2.worker
        replies = []
        for i in range(6):
            c = (c1, c2)[i % 2]
            replies.append(await c.send_text("burst %d" % i, ref="b%d" % i))
        kinds = [r["type"] for r in replies]
        assert kinds == ["ack"] * 5 + ["error"], replies
        limited = replies[-1]
        assert limited["code"] == "rate_limited" and limited["ref"] == "b5"
        assert 0 < limited["retry_after_ms"] <= 1000
        await c1.close()
        await c2.close()

    run(scenario())


def test_invalid_frames_get_errors_and_connection_survives(deployment):
    alice = deployment.login("alice")

    async def scenario():
        c = await Client.connect(deployment, alice)
        too_long = await c.send_text("x" * 2001, ref="long")
        assert too_long["type"] == "error" and too_long["code"] == "too_long"
        assert (await c.send_text("é" * 2000, ref="max"))["type"] == "ack"  # 2000 code points is allowed
        empty = await c.send_text(" \u00a0\n\t ", ref="blank")
        assert empty["code"] == "empty"
        await c.send("{not json")
        assert (await c.wait_for(lambda f: f["type"] == "error"))["code"] == "bad_request"
        await c.send({"type": "dance"})
        assert (await c.wait_for(lambda f: f["type"] == "error"))["code"] == "unknown_type"
        await c.send({"type": "send", "text": 5, "ref": "typed"})
        assert (await c.wait_for(lambda f: f["type"] == "error"))["code"] == "bad_request"
        await c.send({"type": "send", "text": "elsewhere", "room": "attic", "ref": "room"})
        assert (await c.wait_for(lambda f: f["type"] == "error"))["code"] == "not_found"
        await c.send({"type": "send", "text": "elsewhere", "room": "at tic", "ref": "room2"})
        assert (await c.wait_for(lambda f: f["type"] == "error"))["code"] == "bad_request"
        assert (await c.send_text("still usable", ref="ok"))["type"] == "ack"
        await c.send("x" * (70 * 1024))
        assert await c.closed_code() == 1009

    run(scenario())


def test_sync_after_reconnect_and_idempotent_refs(deployment):
    alice, bob = deployment.login("alice"), deployment.login("bob")

    async def scenario():
        a = await Client.connect(deployment, alice)
        b = await Client.connect(deployment, bob)
        first = await a.send_text("before", ref="s0")
        await b.wait_for(lambda f: f["type"] == "message" and f["id"] == first["id"])
        last_seen = first["id"]
        await b.close()

        missed = []
        for i in range(3):
            missed.append((await a.send_text("missed %d" % i, ref="s%d" % (i + 1)))["id"])
        # A retried send with the same ref is stored once and acknowledged with the first id.
        retry = await a.send_text("retried", ref="dup")
        again = await a.send_text("retried", ref="dup")
        assert again["type"] == "ack" and again["id"] == retry["id"]
        missed.append(retry["id"])

        b = await Client.connect(deployment, bob)
        await b.send({"type": "sync", "since": last_seen})
        synced = await b.wait_for(lambda f: f["type"] == "synced")
        assert synced == {"type": "synced", "room": "lobby", "recovered": True}
        replayed = [f["id"] for f in b.seen if f["type"] == "message"]
        assert replayed == missed
        await a.close()
        await b.close()

    run(scenario())
    assert deployment.redis("XLEN", "sc:room:lobby:stream") == "5"


def test_welcome_carries_recent_history_in_order(deployment):
    alice, bob = deployment.login("alice"), deployment.login("bob")

    async def scenario():
        a = await Client.connect(deployment, alice)
        ids = [(await a.send_text("history %d" % i, ref="h%d" % i))["id"] for i in range(4)]
        b = await Client.connect(deployment, bob)
        history = b.welcome["history"]
        assert [m["id"] for m in history][-4:] == ids
        assert [m["text"] for m in history][-4:] == ["history %d" % i for i in range(4)]
        assert all(m["type"] == "message" and m["from"] == "alice" for m in history)
        keys = [id_key(m["id"]) for m in history]
        assert keys == sorted(keys)
        await a.close()
        await b.close()

    run(scenario())


def test_sockets_opened_and_closed_at_once_leave_no_one_online(deployment):
    """Opening and closing sockets as fast as a client can must never leave the user online:
    a connection's open and close reach the coordinator in that order (they used to be sent
    from two unordered tasks, so a close could overtake its open and the user stayed online)."""
    alice, bob = deployment.login("alice"), deployment.login("bob")

    async def scenario():
        async def flap():
            ws = await websockets.connect("wss://127.0.0.1:%d/ws" % deployment.port, ssl=deployment.ssl_context(),
                                          additional_headers={"Cookie": "__Host-sc_session=" + bob.cookies["__Host-sc_session"]})
            await ws.close()   # before or after the welcome: both must end offline

        for _ in range(5):
            await asyncio.gather(*(flap() for _ in range(8)))

        async def bob_online():
            c = await Client.connect(deployment, alice)
            online = "bob" in c.welcome["online"]
            await c.close()
            return not online

        deadline = time.monotonic() + 10
        while not await bob_online():
            assert time.monotonic() < deadline, "bob still online after every socket closed"
            await asyncio.sleep(0.1)

    run(scenario())
    # And no worker still holds a stream of them (one closed during its session check used to stay).
    wait_until(lambda: sum(deployment.worker_health(w)[1]["connections"] for w in ("worker-1", "worker-2")) == 0, 10,
               what="every stream forgotten")


def test_a_user_has_at_most_the_allowed_sockets_open(make_deployment):
    d = make_deployment(extra_args=["--max-sockets-per-user", "2"])
    sessions = [d.login("alice") for _ in range(3)]
    bob = d.login("bob")

    async def scenario():
        first = await Client.connect(d, sessions[0])
        second = await Client.connect(d, sessions[1])
        # The third, even with its own session, is refused with 4009 before any welcome.
        third = await Client.connect(d, sessions[2], expect_welcome=False)
        assert await third.closed_code() == 4009
        b = await Client.connect(d, bob)  # others are not affected
        # A place freed is a place again (the coordinator hears the close first).
        await first.close()
        async def reopened():
            c = await Client.connect(d, sessions[2], expect_welcome=False)
            f = await c.next_frame()
            if f["type"] == "welcome":
                return c
            await c.close()
            return None
        again = None
        deadline = asyncio.get_running_loop().time() + 10
        while again is None:
            assert asyncio.get_running_loop().time() < deadline, "no place after a close"
            try:
                again = await reopened()
            except Exception:
                again = None
            if again is None:
                await asyncio.sleep(0.1)
        ack = await again.send_text("in again")
        assert ack["type"] == "ack"
        for c in (second, again, b):
            await c.close()

    run(scenario())


def test_sync_is_charged_to_its_own_limit(make_deployment):
    d = make_deployment(extra_args=["--sync-burst", "2", "--sync-per-second", "0.01"])

    async def scenario():
        c = await Client.connect(d, d.login("alice"))
        answers = []
        for _ in range(3):
            await c.send({"type": "sync", "since": "0-0"})
            answers.append(await c.wait_for(lambda f: f["type"] in ("synced", "error")))
        assert [a["type"] for a in answers] == ["synced", "synced", "error"], answers
        assert answers[2]["code"] == "rate_limited" and answers[2]["retry_after_ms"] > 1000
        # Sending is a different limit: still fine.
        assert (await c.send_text("after the syncs"))["type"] == "ack"
        await c.close()

    run(scenario())


def test_a_deployment_with_a_cluster_secret_authenticates_every_link(make_deployment):
    d = make_deployment(extra_args=["--cluster-secret", "a-cluster-secret-for-this-test"])
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a = await Client.connect(d, alice)
        b = await Client.connect(d, bob)
        await a.wait_for(lambda f: f["type"] == "presence" and f["user"] == "bob" and f.get("online", True))   # via the coordinator
        ack = await a.send_text("over authenticated links")
        got = await b.wait_for(lambda f: f["type"] == "message")
        assert got["id"] == ack["id"]
        await a.close()
        await b.close()

    run(scenario())
    log = d.log_text()
    assert "refused" not in log and "did not prove" not in log
    assert "a-cluster-secret-for-this-test" not in log
