"""Session audit and brute force, against real deployments: idle and absolute expiry (also of
open sockets), logout everywhere, stolen-cookie replay, and dictionary runs against one account
and across accounts from one address. Fixation and cookie flags are in test_http.py."""
import asyncio
import hashlib
import time

import requests
import websockets

from conftest import wait_until
from wsclient import Client, run


def me(deployment, sid):
    return requests.get(deployment.base + "/api/me", cookies={"__Host-sc_session": sid}, verify=deployment.ca, timeout=5)


def session_key(sid):
    return "sc:session:" + hashlib.sha256(sid.encode()).hexdigest()


def upgrade_status(deployment, sid):
    async def attempt():
        try:
            ws = await websockets.connect("wss://127.0.0.1:%d/ws" % deployment.port, ssl=deployment.ssl_context(),
                                          additional_headers={"Cookie": "__Host-sc_session=" + sid, "Origin": deployment.origin},
                                          open_timeout=10)
        except websockets.InvalidStatus as e:
            return e.response.status_code
        await ws.close()
        return 101
    return run(attempt())


def test_idle_expiry_slides_with_use_and_ends_without(make_deployment):
    d = make_deployment(workers=1, extra_args=["--session-idle-seconds", "2", "--session-max-seconds", "60"])
    sid = d.login("alice").cookies["__Host-sc_session"]
    # Used every half second for twice the idle period: still valid.
    start = time.monotonic()
    while time.monotonic() - start < 4:
        assert me(d, sid).status_code == 200
        time.sleep(0.5)  # pacing the use, not waiting for the service
    last_use = time.monotonic()
    assert me(d, sid).status_code == 200
    # Watched in Redis: asking the gateway would itself be a use.
    wait_until(lambda: d.redis("EXISTS", session_key(sid)) == "0", 10, interval=0.1, what="idle expiry")
    idle_for = time.monotonic() - last_use
    assert 1.0 <= idle_for <= 4, idle_for
    assert me(d, sid).status_code == 401
    assert upgrade_status(d, sid) == 401


def test_absolute_expiry_ends_a_session_in_use_and_closes_its_socket(make_deployment):
    d = make_deployment(workers=1, extra_args=["--session-idle-seconds", "60", "--session-max-seconds", "4",
                                               "--ping-seconds", "0.5"])
    s = d.login("alice")
    sid = s.cookies["__Host-sc_session"]
    logged_in = time.monotonic()

    async def scenario():
        c = await Client.connect(d, s)
        # The socket closes with 4001 (session expired) once the lifetime is over, although it was in use.
        code = await c.closed_code(timeout=12)
        return code, time.monotonic() - logged_in

    code, after = run(scenario())
    assert code == 4001
    assert 3 <= after <= 8, after
    assert me(d, sid).status_code == 401
    assert d.redis("EXISTS", session_key(sid)) == "0"


def test_an_open_socket_keeps_its_session_from_idle_expiry(make_deployment):
    d = make_deployment(workers=1, extra_args=["--session-idle-seconds", "2", "--session-max-seconds", "60",
                                               "--ping-seconds", "0.25"])
    s = d.login("alice")
    sid = s.cookies["__Host-sc_session"]

    async def scenario():
        c = await Client.connect(d, s)
        # No HTTP use for three idle periods; the open socket keeps the session.
        start = time.monotonic()
        while time.monotonic() - start < 6:
            assert d.redis("EXISTS", session_key(sid)) == "1"
            await asyncio.sleep(0.25)  # sampling, not synchronisation
        ack = await c.send_text("still logged in")
        assert ack["type"] == "ack"
        await c.close()

    run(scenario())
    assert me(d, sid).status_code == 200
    # Without the socket, the session idles out as usual.
    wait_until(lambda: d.redis("EXISTS", session_key(sid)) == "0", 10, interval=0.2, what="idle expiry after close")


def test_logout_takes_effect_everywhere_and_a_stolen_cookie_replays_nothing(make_deployment):
    d = make_deployment(workers=2, extra_args=["--gateways", "2"])
    s = d.login("bob")
    sid = s.cookies["__Host-sc_session"]

    async def scenario():
        clients = [await Client.connect(d, s) for _ in range(4)]
        assert len({c.worker for c in clients}) == 2, "sockets on both workers"
        r = s.post(d.base + "/api/logout", headers={"Origin": d.origin})
        assert r.status_code == 200
        codes = await asyncio.gather(*(c.closed_code() for c in clients))
        assert codes == [4001] * 4

    run(scenario())
    # A copy of the cookie taken before the logout: refused by every gateway (new connections are
    # spread over both by SO_REUSEPORT), for pages, the API, the socket and logout itself.
    for _ in range(10):
        assert me(d, sid).status_code == 401
        assert requests.get(d.base + "/chat", cookies={"__Host-sc_session": sid}, verify=d.ca, allow_redirects=False).status_code == 302
    assert upgrade_status(d, sid) == 401
    assert requests.post(d.base + "/api/logout", cookies={"__Host-sc_session": sid}, headers={"Origin": d.origin},
                         verify=d.ca).status_code == 401


DICTIONARY = ["123456", "password", "qwerty", "letmein", "dragon", "monkey", "abc123", "iloveyou", "admin",
              "welcome", "football", "shadow", "master", "sunshine", "princess", "trustno1", "baseball",
              "superman", "batman", "starwars", "passw0rd", "hello123", "freedom", "whatever", "zaq12wsx"]


def login(d, user, password, **kw):
    return requests.post(d.base + "/api/login", json={"username": user, "password": password}, verify=d.ca, timeout=10, **kw)


def test_dictionary_against_one_account_is_throttled(deployment):
    d = deployment
    statuses = [login(d, "bob", word).status_code for word in DICTIONARY]
    # 5 failures a minute per user name: 5 guesses were checked, the other 20 refused unchecked.
    assert statuses == [401] * 5 + [429] * 20, statuses
    # The right password does not get through the throttle either (else guessing goes on)...
    limited = login(d, "bob", "pw-bob-123456")
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 13
    # ...but it is a throttle, not a lockout: it works again once Retry-After has passed.
    throttled_at = time.monotonic()
    wait_until(lambda: login(d, "bob", "pw-bob-123456").status_code == 200, retry_after + 10, interval=1,
               what="login after Retry-After")
    assert time.monotonic() - throttled_at >= retry_after - 1
    # Other accounts were never affected.
    assert login(d, "carol", "pw-carol-123456").status_code == 200


def test_spraying_across_accounts_from_one_address_is_throttled(deployment):
    d = deployment
    held = d.login("dave")  # a session from before the spray
    users = ["user%02d" % i for i in range(22)] + ["alice", "bob", "carol"]
    # One guess per account, some accounts real, some not; a forged X-Forwarded-For changes nothing.
    start = time.monotonic()
    statuses = [login(d, u, DICTIONARY[i], headers={"X-Forwarded-For": "203.0.113.%d" % i}).status_code
                for i, u in enumerate(users)]
    # 20 failures a minute per address: a burst of 20, then one more every 3 s. Each checked
    # guess costs a scrypt, so on a slow machine a cell may refill during the run.
    refilled = int((time.monotonic() - start) / 3)
    assert refilled < 5, "the run was too slow to show the limit"
    assert statuses[:20] == [401] * 20, statuses
    assert statuses.count(401) <= 20 + refilled and statuses.count(429) >= 5 - refilled, statuses
    # A refused guess looks the same for a real and an unknown account.
    real, unknown = login(d, "dave", "nope"), login(d, "nobody-at-all", "nope")
    assert real.status_code == unknown.status_code == 429
    assert real.content == unknown.content
    # Sessions already held go on working: the throttle is on logins, not on people already in.
    async def chat():
        c = await Client.connect(d, held)
        ack = await c.send_text("after the spray")
        await c.close()
        return ack["type"]
    assert run(chat()) == "ack"


def concurrent_logins(d, attempts):
    """Sends every (user, password) at the same moment, each on its own connection."""
    import threading
    barrier = threading.Barrier(len(attempts))
    results = [None] * len(attempts)

    def one(i, user, password):
        s = requests.Session()
        s.trust_env = False
        s.verify = d.ca
        barrier.wait(timeout=30)
        results[i] = s.post(d.base + "/api/login", json={"username": user, "password": password}, timeout=60)
        s.close()

    threads = [threading.Thread(target=one, args=(i, u, p)) for i, (u, p) in enumerate(attempts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert all(r is not None for r in results), "a login never came back"
    return results


def test_concurrent_guesses_are_limited_before_any_is_checked(make_deployment):
    d = make_deployment()
    # 50 wrong guesses for one account at once: the per-name limit (5 a minute) is one atomic
    # take-or-refuse before scrypt, so no more than 5 are ever checked.
    results = concurrent_logins(d, [("bob", "guess-%d" % i) for i in range(50)])
    statuses = [r.status_code for r in results]
    assert 1 <= statuses.count(401) <= 5, statuses
    assert sum(1 for s in statuses if s != 429) <= 5, statuses
    # The limit held for the right password too, and nothing else was affected.
    assert login(d, "bob", "pw-bob-123456").status_code == 429
    assert login(d, "carol", "pw-carol-123456").status_code == 200


def test_password_checks_in_flight_are_bounded(make_deployment):
    d = make_deployment(extra_args=["--max-logins-in-flight", "1", "--login-user-per-minute", "10000",
                                    "--login-address-per-minute", "10000"])
    results = concurrent_logins(d, [("user%02d" % i, "wrong") for i in range(30)])
    statuses = [r.status_code for r in results]
    assert set(statuses) <= {401, 503}, statuses
    busy = [r for r in results if r.status_code == 503]
    assert busy, "30 logins at once with room for one: some must be refused"
    assert all(r.json()["error"] == "busy" and r.headers["Retry-After"] == "1" for r in busy)
    assert statuses.count(401) >= 1
    # The gate is free again afterwards: a refused login cost nothing and held no place.
    wait_until(lambda: login(d, "alice", "pw-alice-123456").status_code == 200, 10, what="a login after the burst")


def test_changing_a_password_or_removing_a_user_ends_their_sessions():
    import os
    import shutil
    import subprocess
    import tempfile
    from conftest import BIN, Deployment, password_for
    d_users = tempfile.mkdtemp(prefix="sc-users-own-")
    path = os.path.join(d_users, "users.json")
    for name in ["alice", "bob", "carol"]:
        subprocess.run([os.path.join(BIN, "securechat"), "users", "add", name, "--users-file", path],
                       input=password_for(name) + "\n", text=True, check=True, capture_output=True)
    d = Deployment(path, allow_demo=False)
    try:
        alice, bob, carol = d.login("alice"), d.login("bob"), d.login("carol")

        async def scenario():
            a, b, c = [await Client.connect(d, s) for s in (alice, bob, carol)]
            # A new password for alice, then bob removed: each one's socket closes with 4001.
            subprocess.run([os.path.join(BIN, "securechat"), "users", "passwd", "alice", "--users-file", path],
                           input="a-new-password-for-alice\n", text=True, check=True, capture_output=True)
            assert await a.closed_code(timeout=10) == 4001
            subprocess.run([os.path.join(BIN, "securechat"), "users", "remove", "bob", "--users-file", path],
                           check=True, capture_output=True, text=True)
            assert await b.closed_code(timeout=10) == 4001
            # carol was not touched and keeps chatting.
            ack = await c.send_text("still here")
            assert ack["type"] == "ack"
            await c.close()
        run(scenario())
        # Their cookies are worthless everywhere; the old password is refused, the new one works.
        for s in (alice, bob):
            assert me(d, s.cookies["__Host-sc_session"]).status_code == 401
            assert upgrade_status(d, s.cookies["__Host-sc_session"]) == 401
        assert login(d, "alice", password_for("alice")).status_code == 401
        assert login(d, "alice", "a-new-password-for-alice").status_code == 200
        assert me(d, carol.cookies["__Host-sc_session"]).status_code == 200
    finally:
        d.stop()
        shutil.rmtree(d_users, ignore_errors=True)


def login_from(d, source, user, password):
    """A login whose TCP connection comes from `source` (another loopback address)."""
    import http.client
    import json as _json
    conn = http.client.HTTPSConnection("127.0.0.1", d.port, source_address=(source, 0), context=d.ssl_context(), timeout=30)
    try:
        conn.request("POST", "/api/login", body=_json.dumps({"username": user, "password": password}),
                     headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_guesser_cannot_keep_the_owner_out(make_deployment):
    d = make_deployment(extra_args=["--login-name-per-minute", "8"])
    # From one address, dave's name is throttled after 5 failures...
    assert [login_from(d, "127.0.0.1", "dave", "guess%d" % i) for i in range(6)] == [401] * 5 + [429]
    # ...for that address only: dave, elsewhere, logs in (and his success costs nothing).
    assert login_from(d, "127.0.0.2", "dave", "pw-dave-123456") == 200
    # Over all addresses the name has a softer limit (8 here, 30 by default): 3 more failures
    # from a third address, and then the name is throttled everywhere for a while.
    assert [login_from(d, "127.0.0.3", "dave", "guess-b%d" % i) for i in range(3)] == [401] * 3
    assert login_from(d, "127.0.0.4", "dave", "guess-c") == 429


def test_behind_an_l4_balancer_limits_see_the_client_the_proxy_header_names(make_deployment):
    import json as _json
    import socket
    from conftest import ProxiedHTTPS
    # 3 failures a minute per address: the bucket refills one every 20 s, far longer than the
    # four guesses below take on a loaded machine (at 20 a minute it refilled every 3 s, and a
    # slow CI run got a 401 where the 429 was due).
    d = make_deployment(extra_args=["--proxy-protocol", "--login-address-per-minute", "3"])

    def guess(header, user):
        conn = ProxiedHTTPS(d.port, header, d.ssl_context())
        try:
            conn.request("POST", "/api/login", body=_json.dumps({"username": user, "password": "wrong"}),
                         headers={"Content-Type": "application/json"})
            return conn.getresponse().status
        finally:
            conn.close()

    v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 5001\r\n"
    # v2, binary: the same kind of header naming another client.
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11, 0x00, 0x0C]) + bytes([203, 0, 113, 10, 127, 0, 0, 1])
          + (40001).to_bytes(2, "big") + (5001).to_bytes(2, "big"))
    # 203.0.113.9 spends its three (one guess per name)...
    assert [guess(v1, "user%02d" % i) for i in range(4)] == [401] * 3 + [429]
    # ...and 203.0.113.10, through the same balancer and the same TCP peer, has its own.
    assert guess(v2, "someone") == 401
    # Without a header (or with a broken one) the gateway closes the connection unanswered.
    for first in (b"GET /healthz HTTP/1.1\r\n\r\n", b"PROXY TCP4 nonsense\r\n"):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.sendall(first)
        assert s.recv(100) == b""
        s.close()
