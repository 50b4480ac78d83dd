"""The server's end-to-end encryption primitives (protocol.md, "End-to-end encryption"):
devices, keys, to_device mailboxes durable until acknowledged (across reconnects and a
worker killed), key backups, and the `devices` announcement. Every payload is opaque."""
from conftest import wait_until
from test_rooms import FAST, call, quiet, refused, rooms_deployment  # noqa: F401
from wsclient import Client, run


def device(i, user):
    return {"id": "%s-dev-%d" % (user, i), "ecdh": "pub-%d" % i, "sig": "s" * 40}


def test_devices_keys_and_their_limits(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a = await Client.connect(d, alice)
        b = await Client.connect(d, bob)
        await call(a, {"type": "device", "device": device(1, "alice")}, "ok")
        # Everyone who shares a room with alice (the lobby: everyone) hears her devices changed.
        assert (await b.wait_for(lambda f: f["type"] == "devices")) == {"type": "devices", "user": "alice"}
        await call(b, {"type": "device", "device": device(1, "bob")}, "ok")
        keys = await call(b, {"type": "keys", "users": ["alice", "bob", "carol"]}, "keys")
        assert keys["devices"] == {"alice": [device(1, "alice")], "bob": [device(1, "bob")], "carol": []}
        # Republishing the same id replaces it; at most 10 devices per user.
        await call(a, {"type": "device", "device": dict(device(1, "alice"), ecdh="rotated")}, "ok")
        for i in range(2, 11):
            await call(a, {"type": "device", "device": device(i, "alice")}, "ok")
        assert await refused(a, {"type": "device", "device": device(11, "alice")}) == "limit"
        keys = await call(b, {"type": "keys", "users": ["alice"]}, "keys")
        assert len(keys["devices"]["alice"]) == 10
        assert {"id": "alice-dev-1", "ecdh": "rotated", "sig": "s" * 40} in keys["devices"]["alice"]
        # Sizes: over 4 KiB is too_long and the connection stays open.
        assert await refused(a, {"type": "device", "device": {"id": "big", "k": "x" * 5000}}) == "too_long"
        assert await refused(a, {"type": "device_remove", "id": "never-was"}) == "not_found"
        await call(a, {"type": "device_remove", "id": "alice-dev-10"}, "ok")
        keys = await call(b, {"type": "keys", "users": ["alice"]}, "keys")
        assert "alice-dev-10" not in [x["id"] for x in keys["devices"]["alice"]]
        for c in (a, b):
            await c.close()

    run(scenario())


def test_to_device_is_kept_until_acknowledged_across_reconnects_and_a_worker_kill(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a = await Client.connect(d, alice)
        b = await Client.connect(d, bob)
        assert await refused(b, {"type": "to_device", "messages": [{"user": "alice", "device": "a1", "payload": "x"}]}) == "bad_request"
        await call(a, {"type": "device", "device": {"id": "a1", "k": "ka1"}}, "ok")
        await call(b, {"type": "device", "device": {"id": "b1", "k": "kb1"}}, "ok")
        other = await Client.connect(d, alice)           # alice's second connection, bound to no device
        # Live: only the connection bound to the device gets it.
        await call(b, {"type": "to_device", "messages": [{"user": "alice", "device": "a1", "payload": {"sealed": "AAA"}}]}, "ok")
        m = await a.wait_for(lambda f: f["type"] == "to_device")
        assert m["from"] == "bob" and m["from_device"] == "b1" and m["payload"] == {"sealed": "AAA"}
        await quiet(other, lambda f: f["type"] == "to_device", 0.5)
        await call(a, {"type": "to_device_ack", "upto": m["id"]}, "ok")
        await a.close()
        await other.close()
        # Offline: kept. Sent while alice has no connection at all.
        ids = []
        for i in range(3):
            await call(b, {"type": "to_device", "messages": [{"user": "alice", "device": "a1", "payload": "p%d" % i}]}, "ok")
        a = await Client.connect_retrying(d, alice)
        await call(a, {"type": "device", "device": {"id": "a1", "k": "ka1"}}, "ok")
        got = [await a.wait_for(lambda f: f["type"] == "to_device") for _ in range(3)]
        assert [g["payload"] for g in got] == ["p0", "p1", "p2"]
        ids = [g["id"] for g in got]
        await call(a, {"type": "to_device_ack", "upto": ids[1]}, "ok")
        # The worker serving alice dies; what was not acknowledged is delivered again.
        victim = a.worker
        d.kill(victim)
        await a.closed_code()
        a = await Client.connect_retrying(d, alice)
        await call(a, {"type": "device", "device": {"id": "a1", "k": "ka1"}}, "ok")
        again = await a.wait_for(lambda f: f["type"] == "to_device")
        assert again["id"] == ids[2] and again["payload"] == "p2"
        await quiet(a, lambda f: f["type"] == "to_device", 0.5)
        # A message to a device that does not exist is dropped, not stored.
        await call(b, {"type": "to_device", "messages": [{"user": "alice", "device": "ghost", "payload": "x"}]}, "ok")
        assert d.redis("EXISTS", "sc:user:alice:dev:ghost:inbox") == "0"
        for c in (a, b):
            await c.close()

    run(scenario())


def test_key_backup_is_one_per_user_and_bounded(make_deployment):
    d = rooms_deployment(make_deployment)
    alice = d.login("alice")

    async def scenario():
        a = await Client.connect(d, alice)
        assert (await call(a, {"type": "backup_get"}, "backup"))["backup"] is None
        await call(a, {"type": "backup_put", "backup": {"v": 1, "ct": "c" * 1000}}, "ok")
        await call(a, {"type": "backup_put", "backup": {"v": 2, "ct": "d"}}, "ok")
        assert (await call(a, {"type": "backup_get"}, "backup"))["backup"] == {"v": 2, "ct": "d"}
        assert await refused(a, {"type": "backup_put", "backup": {"ct": "e" * 50000}}) == "too_long"
        b = await Client.connect(d, alice)                # another browser of the same user
        assert (await call(b, {"type": "backup_get"}, "backup"))["backup"] == {"v": 2, "ct": "d"}
        for c in (a, b):
            await c.close()

    run(scenario())


def test_a_removed_device_is_unbound_on_every_worker(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a1 = await Client.connect(d, alice)
        a2 = await Client.connect(d, alice)
        assert a1.worker != a2.worker
        b = await Client.connect(d, bob)
        for c in (a1, a2):
            await call(c, {"type": "device", "device": {"id": "lost-phone", "k": "k"}}, "ok")
        await call(b, {"type": "device", "device": {"id": "b1", "k": "k"}}, "ok")
        # The device is removed from one connection: the other (on the other worker) is unbound too.
        await call(a1, {"type": "device_remove", "id": "lost-phone"}, "ok")
        # Unbound: it sends nothing more from that device.
        assert await refused(a2, {"type": "to_device", "messages": [{"user": "bob", "device": "b1", "payload": "x"}]}) == "bad_request"
        await call(b, {"type": "to_device", "messages": [{"user": "alice", "device": "lost-phone", "payload": "late"}]}, "ok")
        await quiet(a2, lambda f: f["type"] == "to_device", 0.5)
        for c in (a1, a2, b):
            await c.close()

    run(scenario())
