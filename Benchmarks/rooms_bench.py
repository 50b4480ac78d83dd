"""The rooms scenarios of bench.py (docs/benchmarks.md, "Rooms"):

- rooms:      many clients in many rooms of 10, every room active (the Swift generator), with
              the server's CPU per delivery;
- isolation:  a busy room whose members are all on one worker; the other worker's CPU during
              the traffic against the same length of idle time;
- churn:      members joining and leaving a room while messages flow; joins and leaves per
              second, and every message of the room a client received while it was not a
              member (the answer to its `leave` received, its next `join` not yet sent).
"""
import asyncio
import itertools
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "IntegrationTests"))
from wsclient import Client  # noqa: E402

_REFS = itertools.count()


async def call(c, frame):
    ref = "b%d" % next(_REFS)
    await c.send(dict(frame, ref=ref))
    return await c.wait_for(lambda f: f.get("ref") == ref, timeout=30)


def make_rooms(d, login, count, size, prefix="br-", encrypted=False):
    """Room k is private, owned by user k*size, with users k*size .. k*size+size-1 as members."""
    async def go():
        for k in range(count):
            owner = await Client.connect(d, login(k * size))
            r = await call(owner, {"type": "create_room", "name": "%s%d" % (prefix, k), "kind": "private", "encrypted": encrypted})
            assert r["type"] == "room_added", r
            for i in range(k * size + 1, (k + 1) * size):
                r = await call(owner, {"type": "invite", "room": "%s%d" % (prefix, k), "user": "bench%d" % i})
                assert r["type"] == "ok", r
            await owner.close()
    asyncio.run(go())


def cpu_of(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def isolation(d, sessions, members=10, rate=20.0, seconds=20.0):
    """`sessions` (2*members of them) connect in turn, so the gateway alternates workers; the
    users that landed on worker-1 make a busy room and send into it; worker-2 serves the
    others, in the lobby only."""
    async def go():
        clients = [await Client.connect(d, s) for s in sessions[:2 * members]]
        busy = [c for c in clients if c.worker == "worker-1"]
        other = [c for c in clients if c.worker != "worker-1"]
        assert busy and other, [c.worker for c in clients]
        owner = busy[0]
        r = await call(owner, {"type": "create_room", "name": "busy", "kind": "private"})
        assert r["type"] == "room_added", r
        for c in busy[1:]:
            assert (await call(owner, {"type": "invite", "room": "busy", "user": c.welcome["user"]}))["type"] == "ok"
        w1, w2 = d.pid_of("worker-1"), d.pid_of("worker-2")
        # The same length of quiet first: the other worker's baseline (heartbeats, ticks).
        q1, q2 = cpu_of(w1), cpu_of(w2)
        await asyncio.sleep(seconds)
        idle1, idle2 = cpu_of(w1) - q1, cpu_of(w2) - q2
        readers = [asyncio.create_task(drain(c)) for c in clients]
        s1, s2 = cpu_of(w1), cpu_of(w2)
        sent = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            for c in busy:
                await c.send({"type": "send", "room": "busy", "text": "busy %d" % sent})
                sent += 1
            await asyncio.sleep(max(0, start + sent / (rate * len(busy)) - time.monotonic()))
        await asyncio.sleep(1)
        busy1, busy2 = cpu_of(w1) - s1, cpu_of(w2) - s2
        for t in readers:
            t.cancel()
        got_other = sum(1 for c in other for f in c.seen if f.get("room") == "busy")
        for c in clients:
            await c.close()
        return {"scenario": "isolation", "members_on_worker_1": len(busy), "lobby_only_on_worker_2": len(other),
                "messages": sent, "deliveries": sent * len(busy), "seconds": seconds,
                "worker1_cpu_s_busy": round(busy1, 3), "worker1_cpu_s_idle": round(idle1, 3),
                "worker2_cpu_s_busy": round(busy2, 3), "worker2_cpu_s_idle": round(idle2, 3),
                "busy_room_frames_at_worker2_clients": got_other}
    return asyncio.run(go())


async def drain(c):
    while True:
        c.seen.append(await c.next_frame(timeout=3600))


def churn(d, steady_sessions, churn_sessions, rate=50.0, seconds=20.0):
    """Steady members send into a public room at `rate` in all; churners join and leave it
    as fast as their answers come, and count what reaches them while they are out."""
    async def go():
        steady = [await Client.connect(d, s) for s in steady_sessions]
        r = await call(steady[0], {"type": "create_room", "name": "churn", "kind": "public"})
        assert r["type"] == "room_added", r
        for c in steady[1:]:
            assert (await call(c, {"type": "join", "room": "churn"}))["type"] == "room_added"
        churners = [await Client.connect(d, s) for s in churn_sessions]
        stop = time.monotonic() + seconds
        totals = {"joins": 0, "leaves": 0, "while_out": 0, "while_in": 0}

        async def churner(c):
            ref = itertools.count()
            out = True
            while time.monotonic() < stop:
                kind = "join" if out else "leave"
                tag = "%s-%s-%d" % (kind, c.welcome["user"], next(ref))
                # Joining: from the moment it is sent the client counts as in.
                if out:
                    out = False
                await c.send({"type": kind, "room": "churn", "ref": tag})
                while True:
                    f = await c.next_frame(timeout=30)
                    if f.get("ref") == tag:
                        break
                    if f.get("type") == "message" and f.get("room") == "churn":
                        totals["while_out" if out else "while_in"] += 1
                if kind == "join":
                    assert f["type"] == "room_added", f
                    totals["joins"] += 1
                else:
                    assert f["type"] == "room_removed", f
                    totals["leaves"] += 1
                    out = True
                # A moment in (or out) before the next change, reading what arrives.
                pause = time.monotonic() + 0.05
                while time.monotonic() < pause:
                    try:
                        f = await c.next_frame(timeout=max(0.001, pause - time.monotonic()))
                    except asyncio.TimeoutError:
                        break
                    if f.get("type") == "message" and f.get("room") == "churn":
                        totals["while_out" if out else "while_in"] += 1

        async def sender():
            sent = 0
            start = time.monotonic()
            while time.monotonic() < stop:
                c = steady[sent % len(steady)]
                await c.send({"type": "send", "room": "churn", "text": "m%d" % sent})
                sent += 1
                await asyncio.sleep(max(0, start + sent / rate - time.monotonic()))
            return sent

        steady_readers = [asyncio.create_task(drain(c)) for c in steady]
        t0 = time.monotonic()
        results = await asyncio.gather(sender(), *[churner(c) for c in churners])
        elapsed = time.monotonic() - t0
        for t in steady_readers:
            t.cancel()
        for c in steady + churners:
            await c.close()
        return {"scenario": "churn", "steady_members": len(steady), "churners": len(churners), "seconds": round(elapsed, 1),
                "messages": results[0], "joins": totals["joins"], "leaves": totals["leaves"],
                "membership_changes_per_s": round((totals["joins"] + totals["leaves"]) / elapsed, 1),
                "delivered_to_churners_while_members": totals["while_in"],
                "delivered_to_non_members": totals["while_out"]}
    return asyncio.run(go())


if __name__ == "__main__":
    print(json.dumps({"usage": "imported by bench.py"}))
