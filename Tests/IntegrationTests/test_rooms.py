"""Rooms, direct messages and the message lifecycle (protocol.md v2) against a real
deployment: two workers, users on different workers, real Redis."""
import itertools
import os

from conftest import wait_until
from wsclient import Client, id_key, run

FAST = ["--msg-burst", "1000", "--msg-per-second", "1000", "--sync-burst", "1000", "--sync-per-second", "1000"]
_RUN = os.urandom(3).hex()
_REFS = itertools.count()


async def call(c, frame, expect=None):
    """Sends a frame with a fresh ref and returns the one reply carrying it."""
    ref = "t-%s-%d" % (_RUN, next(_REFS))
    await c.send(dict(frame, ref=ref))
    reply = await c.wait_for(lambda f: f.get("ref") == ref)
    if expect is not None:
        assert reply["type"] == expect, reply
    return reply


async def refused(c, frame):
    reply = await call(c, frame)
    assert reply["type"] == "error", reply
    return reply["code"]


async def on_two_workers(d, first, second):
    a = await Client.connect(d, first)
    b = await Client.connect(d, second)
    assert a.worker and b.worker and a.worker != b.worker, (a.worker, b.worker)
    return a, b


async def quiet(c, predicate, seconds=1.0):
    """Asserts no frame matching `predicate` arrives within `seconds` (after others that do)."""
    try:
        f = await c.wait_for(predicate, timeout=seconds)
    except AssertionError:
        return
    raise AssertionError("unexpected frame %r" % f)


def rooms_deployment(make_deployment, extra=()):
    """A deployment whose gateway has written every account of the users file to Redis
    (invite and open_dm know a user by it), a second or so after it starts."""
    d = make_deployment(extra_args=FAST + list(extra))
    wait_until(lambda: int(d.redis("SCARD", "sc:users") or 0) >= 6, 10, what="accounts synced to redis")
    return d


def test_create_join_chat_leave_across_workers(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a, b = await on_two_workers(d, alice, bob)
        assert [r["id"] for r in a.welcome["rooms"]] == ["lobby"]
        added = await call(a, {"type": "create_room", "name": "Dev-Team", "kind": "public", "title": "Dev", "topic": "builds"}, "room_added")
        room = added["room"]
        assert room["id"] == "dev-team" and room["kind"] == "public" and room["owner"] == "alice"
        assert room["members"] == 1 and room["encrypted"] is False and room["title"] == "Dev" and room["last_id"] == "0-0"
        assert await refused(b, {"type": "create_room", "name": "dev-team", "kind": "private"}) == "room_exists"
        # Not joined yet: a public room says not_member.
        assert await refused(b, {"type": "send", "room": "dev-team", "text": "hi"}) == "not_member"
        assert await refused(b, {"type": "history", "room": "dev-team"}) == "not_member"
        found = await call(b, {"type": "directory", "query": "DEV"}, "directory")
        assert [r["id"] for r in found["rooms"]] == ["dev-team"]
        assert await refused(b, {"type": "remove", "room": "dev-team", "user": "alice"}) == "forbidden"
        assert await refused(b, {"type": "set_room", "room": "dev-team", "topic": "x"}) == "forbidden"
        await b.send({"type": "join", "room": "dev-team", "ref": "j"})
        # A sync sent right behind the join (before its answer) is served.
        await b.send({"type": "sync", "room": "dev-team", "since": "0-0"})
        joined = await b.wait_for(lambda f: f.get("ref") == "j")
        assert joined["type"] == "room_added" and joined["room"]["members"] == 2
        assert (await b.wait_for(lambda f: f["type"] in ("synced", "error")))["type"] == "synced"
        member = await a.wait_for(lambda f: f["type"] == "member")
        assert member == {"type": "member", "room": "dev-team", "user": "bob", "joined": True}
        # A message in the room reaches both workers' members, and no one else.
        carol = await Client.connect(d, d.login("carol"))
        ack = await call(a, {"type": "send", "room": "dev-team", "text": "  to the team "}, "ack")
        for c in (a, b):
            m = await c.wait_for(lambda f: f["type"] == "message" and f["room"] == "dev-team")
            assert m["id"] == ack["id"] and m["text"] == "to the team" and m["from"] == "alice"
        await quiet(carol, lambda f: f.get("room") == "dev-team")
        members = await call(a, {"type": "members", "room": "dev-team"}, "members")
        assert members["members"] == [{"user": "alice", "online": True}, {"user": "bob", "online": True}]
        rooms = await call(b, {"type": "rooms"}, "rooms")
        mine = {r["id"]: r for r in rooms["rooms"]}
        assert set(mine) == {"lobby", "dev-team"} and mine["dev-team"]["unread"] == 1
        # Leave: answered, then nothing more of the room reaches bob.
        left = await call(b, {"type": "leave", "room": "dev-team"}, "room_removed")
        assert left["room"] == "dev-team" and left["reason"] == "left"
        await call(a, {"type": "send", "room": "dev-team", "text": "after bob left"}, "ack")
        await quiet(b, lambda f: f.get("room") == "dev-team" and f["type"] == "message")
        assert await refused(b, {"type": "leave", "room": "lobby"}) == "forbidden"
        for c in (a, b, carol):
            await c.close()

    run(scenario())


def test_private_rooms_are_not_found_by_outsiders_and_removal_is_immediate(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob, carol = d.login("alice"), d.login("bob"), d.login("carol")

    async def scenario():
        a, b = await on_two_workers(d, alice, bob)
        c = await Client.connect(d, carol)
        await call(a, {"type": "create_room", "name": "secret", "kind": "private"}, "room_added")
        # An outsider cannot tell a private room from a missing one.
        for frame in ({"type": "join", "room": "secret"}, {"type": "send", "room": "secret", "text": "x"},
                      {"type": "members", "room": "secret"}, {"type": "history", "room": "secret"},
                      {"type": "invite", "room": "secret", "user": "carol"}, {"type": "typing", "room": "secret"},
                      {"type": "read", "room": "secret", "id": "1-0"}):
            assert await refused(b, frame) == "not_found", frame
            assert await refused(b, dict(frame, room="nothing-here")) == "not_found", frame
        directory = await call(c, {"type": "directory"}, "directory")
        assert "secret" not in [r["id"] for r in directory["rooms"]]
        assert await refused(a, {"type": "invite", "room": "secret", "user": "nobody-such"}) == "not_found"
        # Invited on one worker, bob receives the very next message on the other.
        await call(a, {"type": "invite", "room": "secret", "user": "bob"}, "ok")
        added = await b.wait_for(lambda f: f["type"] == "room_added")
        assert added["room"]["id"] == "secret" and added["room"]["unread"] == 0
        ack = await call(a, {"type": "send", "room": "secret", "text": "welcome bob"}, "ack")
        got = await b.wait_for(lambda f: f["type"] == "message" and f["room"] == "secret")
        assert got["id"] == ack["id"]
        # Only the owner or an admin removes; bob may invite carol (any member adds).
        assert await refused(b, {"type": "remove", "room": "secret", "user": "alice"}) == "forbidden"
        assert await refused(b, {"type": "set_room", "room": "secret", "title": "mine"}) == "forbidden"
        await call(b, {"type": "invite", "room": "secret", "user": "carol"}, "ok")
        await c.wait_for(lambda f: f["type"] == "room_added")
        await b.wait_for(lambda f: f["type"] == "member" and f["user"] == "carol")
        b.pending.clear()
        # Removal on alice's worker: once answered, bob's streams get nothing more of it.
        await call(a, {"type": "remove", "room": "secret", "user": "bob"}, "ok")
        removed = await b.wait_for(lambda f: f["type"] == "room_removed")
        assert removed == {"type": "room_removed", "room": "secret", "reason": "removed"}
        for i in range(5):
            await call(a, {"type": "send", "room": "secret", "text": "after removal %d" % i}, "ack")
        await c.wait_for(lambda f: f["type"] == "message" and f.get("text") == "after removal 4")
        await quiet(b, lambda f: f.get("room") == "secret" and f["type"] in ("message", "member", "typing"))
        await b.send({"type": "sync", "room": "secret", "since": "0-0"})
        assert (await b.wait_for(lambda f: f["type"] in ("error", "synced")))["code"] == "not_found"
        # An admin removes and renames without being a member.
        admin = await Client.connect(d, d.login("admin"))
        updated = await call(admin, {"type": "set_room", "room": "secret", "title": "Secret plans"}, "room_updated")
        assert updated["room"]["title"] == "Secret plans"
        await a.wait_for(lambda f: f["type"] == "room_updated" and f["room"]["title"] == "Secret plans")
        await call(admin, {"type": "remove", "room": "secret", "user": "carol"}, "ok")
        await c.wait_for(lambda f: f["type"] == "room_removed")
        for x in (a, b, c, admin):
            await x.close()

    run(scenario())


def test_dms_are_encrypted_rooms_of_two(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a, b = await on_two_workers(d, alice, bob)
        assert await refused(a, {"type": "open_dm", "user": "alice"}) == "bad_request"
        assert await refused(a, {"type": "open_dm", "user": "nobody-such"}) == "not_found"
        dm = (await call(a, {"type": "open_dm", "user": "bob"}, "room_added"))["room"]
        assert dm["id"] == "dm:alice:bob" and dm["kind"] == "dm" and dm["encrypted"] is True and dm["members"] == 2
        other = await b.wait_for(lambda f: f["type"] == "room_added")
        assert other["room"]["id"] == "dm:alice:bob"
        again = (await call(b, {"type": "open_dm", "user": "alice"}, "room_added"))["room"]
        assert again["id"] == dm["id"]
        # Text is refused in an encrypted room; e2ee is relayed as it is.
        assert await refused(a, {"type": "send", "room": dm["id"], "text": "plain"}) == "bad_request"
        assert await refused(a, {"type": "send", "text": "x", "e2ee": {"c": "y"}}) == "bad_request"
        assert await refused(a, {"type": "send", "e2ee": {"c": "z" * 17000}, "room": dm["id"]}) == "too_long"
        ack = await call(a, {"type": "send", "room": dm["id"], "e2ee": {"v": 1, "ct": "QUJD"}}, "ack")
        m = await b.wait_for(lambda f: f["type"] == "message" and f["room"] == dm["id"])
        assert m["id"] == ack["id"] and m["e2ee"] == {"v": 1, "ct": "QUJD"} and "text" not in m
        assert await refused(a, {"type": "leave", "room": dm["id"]}) == "forbidden"
        assert await refused(a, {"type": "invite", "room": dm["id"], "user": "carol"}) == "forbidden"
        carol = await Client.connect(d, d.login("carol"))
        assert await refused(carol, {"type": "history", "room": dm["id"]}) == "not_found"
        await call(a, {"type": "create_room", "name": "vault", "kind": "private", "encrypted": True}, "room_added")
        assert await refused(a, {"type": "send", "room": "vault", "text": "plain"}) == "bad_request"
        assert await refused(a, {"type": "create_room", "name": "pub", "kind": "public", "encrypted": False}) == "bad_request"
        for x in (a, b, carol):
            await x.close()

    run(scenario())


def test_lifecycle_edit_delete_react_reply_and_history(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a, b = await on_two_workers(d, alice, bob)
        await call(a, {"type": "create_room", "name": "life", "kind": "public"}, "room_added")
        await call(b, {"type": "join", "room": "life"}, "room_added")
        first = await call(a, {"type": "send", "room": "life", "text": "secret typo"}, "ack")
        reply = await call(b, {"type": "send", "room": "life", "text": "re", "reply_to": first["id"]}, "ack")
        assert await refused(b, {"type": "send", "room": "life", "text": "x", "reply_to": "1-0"}) == "not_found"
        assert await refused(b, {"type": "edit", "room": "life", "id": first["id"], "text": "mine now"}) == "forbidden"
        edit = await call(a, {"type": "edit", "room": "life", "id": first["id"], "text": "secret fixed"}, "ack")
        react = await call(b, {"type": "react", "room": "life", "id": first["id"], "emoji": "👍", "on": True}, "ack")
        assert await refused(b, {"type": "delete", "room": "life", "id": first["id"]}) == "forbidden"
        events = []
        while len(events) < 4:
            events.append(await b.wait_for(lambda f: f["type"] == "message" and f["room"] == "life"))
        assert [e.get("kind", "text") for e in events] == ["text", "text", "edit", "reaction"]
        assert events[1]["reply_to"] == first["id"]
        assert events[2]["target"] == first["id"] and events[2]["text"] == "secret fixed"
        assert events[3]["emoji"] == "👍" and events[3]["on"] is True
        deleted = await call(a, {"type": "delete", "room": "life", "id": first["id"]}, "ack")
        assert id_key(deleted["id"]) > id_key(react["id"])
        gone = await b.wait_for(lambda f: f["type"] == "message" and f.get("kind") == "delete")
        assert gone["target"] == first["id"]
        assert await refused(a, {"type": "edit", "room": "life", "id": first["id"], "text": "again"}) == "not_found"
        assert await refused(b, {"type": "react", "room": "life", "id": first["id"], "emoji": "x", "on": True}) == "not_found"
        assert await refused(b, {"type": "react", "room": "life", "id": reply["id"], "emoji": "x"}) == "bad_request"
        # The deleted text (and its edit's) is gone from history, sync and the stream itself.
        hist = await call(b, {"type": "history", "room": "life"}, "history")
        texts = [m.get("text") for m in hist["messages"]]
        assert "secret typo" not in texts and "secret fixed" not in texts
        assert [m["id"] for m in hist["messages"]] == [reply["id"], react["id"], deleted["id"]]
        assert hist["more"] is False
        await b.send({"type": "sync", "room": "life", "since": "0-0"})
        replay = []
        while True:
            f = await b.wait_for(lambda f: f["type"] in ("message", "synced") and f.get("room") == "life")
            if f["type"] == "synced":
                break
            replay.append(f)
        assert [m["id"] for m in replay] == [reply["id"], react["id"], deleted["id"]]
        assert all("secret" not in (m.get("text") or "") for m in replay)
        assert "secret" not in d.redis("XRANGE", "sc:room:life:stream", "-", "+")
        for x in (a, b):
            await x.close()

    run(scenario())


def test_history_pages_backwards(make_deployment):
    d = rooms_deployment(make_deployment)
    alice = d.login("alice")

    async def scenario():
        a = await Client.connect(d, alice)
        await call(a, {"type": "create_room", "name": "pages", "kind": "public"}, "room_added")
        ids = [(await call(a, {"type": "send", "room": "pages", "text": "m%d" % i}, "ack"))["id"] for i in range(25)]
        newest = await call(a, {"type": "history", "room": "pages", "limit": 10}, "history")
        assert [m["id"] for m in newest["messages"]] == ids[-10:] and newest["more"] is True
        older = await call(a, {"type": "history", "room": "pages", "limit": 10, "before": ids[-10]}, "history")
        assert [m["id"] for m in older["messages"]] == ids[5:15] and older["more"] is True
        oldest = await call(a, {"type": "history", "room": "pages", "limit": 10, "before": ids[5]}, "history")
        assert [m["id"] for m in oldest["messages"]] == ids[:5] and oldest["more"] is False
        assert await refused(a, {"type": "history", "room": "pages", "limit": 0}) == "bad_request"
        await a.close()

    run(scenario())


def test_read_markers_follow_the_user_and_typing_is_throttled(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob1, bob2 = d.login("alice"), d.login("bob"), d.login("bob")

    async def scenario():
        a = await Client.connect(d, alice)
        b1 = await Client.connect(d, bob1)
        b2 = await Client.connect(d, bob2)
        assert b1.worker != b2.worker
        await call(a, {"type": "create_room", "name": "reads", "kind": "private"}, "room_added")
        await call(a, {"type": "invite", "room": "reads", "user": "bob"}, "ok")
        for c in (b1, b2):
            await c.wait_for(lambda f: f["type"] == "room_added")
        ids = [(await call(a, {"type": "send", "room": "reads", "text": "n%d" % i}, "ack"))["id"] for i in range(3)]
        rooms = {r["id"]: r for r in (await call(b2, {"type": "rooms"}, "rooms"))["rooms"]}
        assert rooms["reads"]["unread"] == 3
        await call(b1, {"type": "read", "room": "reads", "id": ids[1]}, "ok")
        moved = await b2.wait_for(lambda f: f["type"] == "read")
        assert moved == {"type": "read", "room": "reads", "id": ids[1]}
        await quiet(b1, lambda f: f["type"] == "read", 0.5)     # not to the connection that moved it
        rooms = {r["id"]: r for r in (await call(b2, {"type": "rooms"}, "rooms"))["rooms"]}
        assert rooms["reads"]["unread"] == 1 and rooms["reads"]["read"] == ids[1]
        # Backwards is answered ok and changes nothing.
        await call(b1, {"type": "read", "room": "reads", "id": ids[0]}, "ok")
        await quiet(b2, lambda f: f["type"] == "read", 0.5)
        # Typing: no reply, relayed once per 2 s to the others, never to the typer.
        for _ in range(5):
            await b1.send({"type": "typing", "room": "reads", "ref": "typing"})
        t = await a.wait_for(lambda f: f["type"] == "typing")
        assert t == {"type": "typing", "room": "reads", "user": "bob"}
        await quiet(a, lambda f: f["type"] == "typing", 1.0)
        await quiet(b1, lambda f: f["type"] == "typing" or f.get("ref") == "typing", 0.3)
        await quiet(b2, lambda f: f["type"] == "typing", 0.3)
        for c in (a, b1, b2):
            await c.close()

    run(scenario())


def test_room_limits(make_deployment):
    d = rooms_deployment(make_deployment, ["--room-creations-per-hour", "2", "--max-rooms-per-user", "3",
                                           "--max-private-members", "2"])
    alice, bob, carol = d.login("alice"), d.login("bob"), d.login("carol")

    async def scenario():
        a = await Client.connect(d, alice)
        b = await Client.connect(d, bob)
        await call(a, {"type": "create_room", "name": "one", "kind": "private"}, "room_added")
        assert await refused(a, {"type": "create_room", "name": "one", "kind": "private"}) == "room_exists"
        await call(a, {"type": "create_room", "name": "two", "kind": "public"}, "room_added")
        # The third within the hour is refused; the refused one above did not count.
        assert await refused(a, {"type": "create_room", "name": "three", "kind": "public"}) == "limit"
        # dms do not count as creations.
        await call(a, {"type": "open_dm", "user": "bob"}, "room_added")
        # alice is now in 3 rooms besides the lobby: no fourth.
        await call(b, {"type": "create_room", "name": "bobs", "kind": "public"}, "room_added")
        assert await refused(a, {"type": "join", "room": "bobs"}) == "limit"
        # A private room holds at most 2 members.
        await call(a, {"type": "invite", "room": "one", "user": "bob"}, "ok")
        assert await refused(a, {"type": "invite", "room": "one", "user": "carol"}) == "limit"
        await a.close()
        await b.close()

    run(scenario())


def test_rooms_survive_restarts_of_redis_and_a_worker(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a, b = await on_two_workers(d, alice, bob)
        await call(a, {"type": "create_room", "name": "durable", "kind": "private", "topic": "kept"}, "room_added")
        await call(a, {"type": "invite", "room": "durable", "user": "bob"}, "ok")
        await b.wait_for(lambda f: f["type"] == "room_added")
        ack = await call(a, {"type": "send", "room": "durable", "text": "before"}, "ack")
        await call(b, {"type": "read", "room": "durable", "id": ack["id"]}, "ok")
        await a.close()
        await b.close()
        d.kill("redis")
        wait_until(d.healthy, 30, what="healthy after the redis restart")
        d.kill("worker-1")
        wait_until(d.healthy, 30, what="healthy after the worker restart")
        last = ack["id"]
        for session in (alice, bob, alice):
            c = await Client.connect_retrying(d, session)
            rooms = {r["id"]: r for r in c.welcome["rooms"]}
            assert rooms["durable"]["topic"] == "kept" and rooms["durable"]["members"] == 2
            assert rooms["durable"]["last_id"] == last
            if session is bob:
                assert rooms["durable"]["read"] == ack["id"] and rooms["durable"]["unread"] == 1
            # The stream's rooms are routed again on whichever worker it landed.
            sent = await call(c, {"type": "send", "room": "durable", "text": "after " + c.worker}, "ack")
            got = await c.wait_for(lambda f: f["type"] == "message" and f["id"] == sent["id"])
            assert got["room"] == "durable"
            last = sent["id"]
            await c.close()

    run(scenario())


def test_a_worker_subscribes_only_to_rooms_it_serves(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a, b = await on_two_workers(d, alice, bob)
        await call(a, {"type": "create_room", "name": "only-a", "kind": "public"}, "room_added")

        def channels():
            # How many connections (one per worker) subscribe to each channel.
            out = d.redis("PUBSUB", "NUMSUB", "sc:room:only-a", "sc:room:lobby", "sc:user:alice", "sc:user:bob").split()
            return {out[i]: int(out[i + 1]) for i in range(0, len(out), 2)}

        wait_until(lambda: channels()["sc:room:only-a"] == 1, 5, what="one worker subscribed to only-a")
        n = channels()
        assert n["sc:room:lobby"] == 2 and n["sc:user:alice"] == 1 and n["sc:user:bob"] == 1
        await call(a, {"type": "leave", "room": "only-a"}, "room_removed")
        wait_until(lambda: channels()["sc:room:only-a"] == 0, 5, what="unsubscribed after the last member left")
        await a.close()
        await b.close()
        wait_until(lambda: channels()["sc:room:lobby"] == 0, 5, what="no worker serves the lobby")

    run(scenario())


def test_a_lost_subscription_is_refilled_per_room(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob = d.login("alice"), d.login("bob")

    async def scenario():
        a, b = await on_two_workers(d, alice, bob)
        await call(a, {"type": "create_room", "name": "refill", "kind": "private"}, "room_added")
        await call(a, {"type": "invite", "room": "refill", "user": "bob"}, "ok")
        await b.wait_for(lambda f: f["type"] == "room_added")
        ids = []
        for i in range(15):
            # Every worker's subscription cut again and again while the room's messages flow.
            d.redis("CLIENT", "KILL", "TYPE", "pubsub")
            ids.append((await call(a, {"type": "send", "room": "refill", "text": "during %d" % i}, "ack"))["id"])
        got = []
        while len(got) < len(ids):
            got.append((await b.wait_for(lambda f: f["type"] == "message" and f["room"] == "refill", timeout=15))["id"])
        assert got == ids                       # every one, once, in order, without a sync
        await a.close()
        await b.close()

    run(scenario())
