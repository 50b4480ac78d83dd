"""Chaos run: a deployment of 3 workers under steady traffic while a random
worker, the coordinator and Redis are killed (SIGKILL) in turn and restarted by
the launcher. Prints what was acknowledged, delivered, lost and duplicated,
and how long clients were without a working connection.

    scripts/chaos [--clients 200] [--senders 20] [--rate 1.0] [--duration 120]

Everything runs on loopback and stops by itself."""
import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(__file__))
import conftest  # noqa: E402
from resilient import ResilientClient, wait_until  # noqa: E402
from wsclient import id_key  # noqa: E402


def make_users(n_users):
    d = tempfile.mkdtemp(prefix="sc-chaos-users-")
    path = os.path.join(d, "users.json")
    shutil.copy(os.path.join(conftest.ROOT, "users.json"), path)
    for i in range(n_users):
        name = "chaos%03d" % i
        subprocess.run([os.path.join(conftest.BIN, "securechat"), "users", "add", name, "--users-file", path],
                       input=conftest.password_for(name) + "\n", text=True, check=True, capture_output=True)
    return path


async def main(args):
    random.seed(args.seed)
    n_users = max(args.senders, args.users)
    users_file = make_users(n_users + 2)
    # Raise the message limit only so that the chosen rate is never throttled; logins are untouched.
    d = conftest.Deployment(users_file, workers=3,
                            extra_args=["--msg-burst", "50", "--msg-per-second", str(max(5.0, args.rate * 5))])
    events = []
    t0 = time.monotonic()

    def note(what):
        events.append((round(time.monotonic() - t0, 2), what))
        print("[%6.2f s] %s" % (time.monotonic() - t0, what), flush=True)

    try:
        names = ["chaos%03d" % i for i in range(n_users)]
        spare = ["chaos%03d" % i for i in range(n_users, n_users + 2)]   # they arrive during the coordinator outage
        churned, late = [], []
        sessions = {n: d.login(n) for n in names}
        senders = [ResilientClient(d, sessions[names[i]], "s%02d" % i) for i in range(args.senders)]
        # Senders have users of their own; receivers share the others (several connections per user).
        receiver_names = names[args.senders:] or names
        receivers = [ResilientClient(d, sessions[receiver_names[i % len(receiver_names)]], "r%03d" % i)
                     for i in range(args.clients - args.senders)]
        clients = senders + receivers
        everyone = {c: names[i] for i, c in enumerate(senders)}
        everyone.update({c: receiver_names[i % len(receiver_names)] for i, c in enumerate(receivers)})
        tasks = [asyncio.create_task(c.run()) for c in clients]
        await wait_until(lambda: all(c.live.is_set() for c in clients), 60, "all clients connected")
        users_online = set(everyone.values())
        await wait_until(lambda: all(c.online >= users_online for c in clients), 20, "presence complete")
        note("%d clients live on %s" % (len(clients), dict(Counter(c.workers[-1] for c in clients))))

        stop_traffic = asyncio.Event()

        async def traffic(c):
            n = 0
            while not stop_traffic.is_set():
                n += 1
                await c.send("%s message %d" % (c.name, n))
                await asyncio.sleep(1.0 / args.rate * random.uniform(0.8, 1.2))

        load = [asyncio.create_task(traffic(s)) for s in senders]
        kills = {"worker": [], "coordinator": [], "redis": []}
        presence_times = []
        schedule = ["worker", "coordinator", "redis", "worker"]
        gap = args.duration / (len(schedule) + 1)
        for step, target in enumerate(schedule):
            await asyncio.sleep(gap)
            if target == "worker":
                # The worker serving the most clients.
                victim = Counter(c.workers[-1] for c in clients if c.live.is_set()).most_common(1)[0][0]
                on_victim = [c for c in clients if c.live.is_set() and c.workers and c.workers[-1] == victim]
                d.kill(victim)
                at = time.monotonic()
                note("SIGKILL %s (%d clients on it)" % (victim, len(on_victim)))
                await wait_until(lambda: all(c.live.is_set() and c.workers[-1] != victim or
                                             (c.live.is_set() and len(c.workers) > 1) for c in on_victim),
                                 30, "clients of %s back" % victim)
                back = max((c.outages[-1] for c in on_victim if c.outages), default=0.0)
                kills["worker"].append({"worker": victim, "clients": len(on_victim), "all_back_after_s": round(back, 3),
                                        "wall_s": round(time.monotonic() - at, 3)})
                note("all %d clients of %s back; longest outage %.3f s" % (len(on_victim), victim, back))
            elif target == "coordinator":
                # A controlled outage: the launcher is paused so that users can come and go while
                # no coordinator sees it; then it restarts the coordinator.
                d.pause_launcher()
                d.kill("coordinator")
                at = time.monotonic()
                note("SIGKILL coordinator (launcher paused for 2 s)")
                leaving = sorted(set(everyone[c] for c in receivers))[:2]
                for c in clients:
                    if everyone[c] in leaving:
                        c.stop = True
                        churned.append(c)
                        if c.ws:
                            await c.ws.close()
                newcomers = [ResilientClient(d, d.login(n), "late-" + n) for n in spare]
                for c in newcomers:
                    everyone[c] = c.name[len("late-"):]
                    tasks.append(asyncio.create_task(c.run()))
                await wait_until(lambda: all(c.live.is_set() for c in newcomers), 10, "newcomers connected")
                clients = [c for c in clients if c not in churned]
                users_online = (users_online - set(leaving)) | set(spare)
                note("meanwhile %s left and %s arrived" % (", ".join(leaving), ", ".join(spare)))
                late.extend(newcomers)
                await asyncio.sleep(max(0.0, 2 - (time.monotonic() - at)))
                d.resume_launcher()
                await wait_until(lambda: d.pid_of("coordinator") is not None, 30, "coordinator restarted")
                restarted = time.monotonic()
                note("coordinator restarted %.3f s after the kill" % (restarted - at))
                watched = clients + newcomers
                await wait_until(lambda: all(c.online == users_online for c in watched if c.live.is_set()),
                                 30, "presence exact")
                exact = time.monotonic() - restarted
                presence_times.append(exact)
                kills["coordinator"].append({"outage_s": round(restarted - at, 3), "presence_exact_after_restart_s": round(exact, 3)})
                note("presence exact on every client %.3f s after the restart" % exact)
            else:
                d.kill("redis")
                at = time.monotonic()
                note("SIGKILL redis")
                await wait_until(lambda: d.pid_of("redis") is not None, 30, "redis restarted")
                await wait_until(lambda: all(not s.pending for s in senders), 30, "sends during the outage acknowledged")
                kills["redis"].append({"sends_acknowledged_again_after_s": round(time.monotonic() - at, 3)})
                note("redis back; every send made during the outage acknowledged %.3f s after the kill" % (time.monotonic() - at))
        await asyncio.sleep(gap)
        stop_traffic.set()
        await asyncio.gather(*load)
        note("traffic stopped")
        await wait_until(lambda: all(not s.pending for s in senders), 60, "every send acknowledged")
        acked = sorted({i for s in senders for i in s.acked.values()}, key=id_key)
        acked_set = set(acked)
        await wait_until(lambda: all(set(c.shown) >= acked_set for c in clients), 60, "every client caught up")
        note("converged")

        # Stored twice? Every sent text is unique, so count texts that occur more than once in the stream.
        stream = d.redis("XRANGE", "sc:room:lobby:stream", "-", "+").split("\n")
        texts = Counter(line for line in stream if " message " in line)
        stored_twice = sum(n - 1 for n in texts.values() if n > 1)
        delivered = [len([i for i in c.shown if i in acked_set]) for c in clients]
        lost = sum(len(acked) - n for n in delivered)
        shown_twice = sum(len(c.shown) - len(set(c.shown)) for c in clients)
        out_of_order = sum(1 for c in clients if [i for i in c.shown if i in acked_set] != acked)
        longest = max((o for c in clients for o in c.outages), default=0.0)
        result = {
            "scenario": "chaos",
            "churned_during_coordinator_outage": {"left": len(churned), "arrived": len(late)}, "workers": 3, "clients": len(clients), "senders": len(senders),
            "rate_per_sender": args.rate, "duration_s": args.duration,
            "messages_acknowledged": len(acked),
            "deliveries_expected": len(acked) * len(clients), "deliveries": sum(delivered),
            "lost": lost, "duplicated_shown": shown_twice, "stored_twice": stored_twice,
            "clients_out_of_order": out_of_order,
            "longest_without_connection_s": round(longest, 3),
            "worker_kills": kills["worker"], "coordinator_kills": kills["coordinator"], "redis_kills": kills["redis"],
            "reconnects": sum(len(c.workers) - 1 for c in clients),
        }
        print()
        print("messages acknowledged       %d" % result["messages_acknowledged"])
        print("deliveries (per client)     %d of %d expected (min %d, max %d per client)"
              % (result["deliveries"], result["deliveries_expected"], min(delivered), max(delivered)))
        print("lost                        %d" % lost)
        print("duplicated (shown / stored) %d / %d" % (shown_twice, stored_twice))
        print("clients out of order        %d" % out_of_order)
        print("longest without connection  %.3f s" % longest)
        for k in kills["worker"]:
            print("worker kill %-10s       %d clients, all back within %.3f s" % (k["worker"], k["clients"], k["all_back_after_s"]))
        for k in kills["coordinator"]:
            print("coordinator restart         presence exact %.3f s after restart" % k["presence_exact_after_restart_s"])
        print(json.dumps(result))
        ok = lost == 0 and shown_twice == 0 and stored_twice == 0 and out_of_order == 0 and \
            all(k["all_back_after_s"] <= 3 for k in kills["worker"]) and all(t <= 3 for t in presence_times)
        print("BAR MET" if ok else "BAR NOT MET")
        for c in clients + late:
            c.stop = True
            if c.ws:
                await c.ws.close()
        for t in tasks:
            t.cancel()
        return 0 if ok else 1
    finally:
        d.stop()
        shutil.rmtree(os.path.dirname(users_file), ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--senders", type=int, default=20)
    p.add_argument("--users", type=int, default=60, help="distinct user accounts the clients use")
    p.add_argument("--rate", type=float, default=1.0, help="messages per second per sender")
    p.add_argument("--duration", type=float, default=120)
    p.add_argument("--seed", type=int, default=1)
    sys.exit(asyncio.run(main(p.parse_args())))
