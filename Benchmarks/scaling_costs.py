"""What one message costs each part (docs/scaling.md): Redis commands and bytes, and
coordinator calls, per message sent into a room of N members, read from Redis's INFO and
every process's Prometheus metrics before and after M messages.

    SECURECHAT_BIN=<release build> .venv/bin/python Benchmarks/scaling_costs.py [--members 10] [--messages 2000]

It starts its own deployment (the launcher, 2 workers) and stops it."""
import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "IntegrationTests"))
sys.path.insert(0, HERE)
import conftest  # noqa: E402
from bench import FAST, PASSWORD, make_users  # noqa: E402
from wsclient import Client  # noqa: E402


def redis_info(d):
    calls = {}
    for line in d.redis("INFO", "commandstats").splitlines():
        m = re.match(r"cmdstat_(\S+):calls=(\d+),usec=(\d+)", line)
        if m:
            calls[m.group(1)] = int(m.group(2))
            calls[m.group(1) + "_usec"] = int(m.group(3))
    stats = dict(l.split(":", 1) for l in d.redis("INFO", "stats").splitlines() if ":" in l)
    return calls, int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


def metrics(d):
    urls = json.load(open(os.path.join(d.state, "metrics.json")))
    out = {}
    for name, url in urls.items():
        for line in requests.get(url, timeout=5).text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, value = line.rsplit(" ", 1)
            out[(name.split("-")[0], key)] = out.get((name.split("-")[0], key), 0.0) + float(value)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--messages", type=int, default=2000)
    args = p.parse_args()
    users = make_users(args.members)
    d = conftest.Deployment(users, workers=2, extra_args=FAST + ["--request-burst", "100000", "--requests-per-second", "100000"])
    try:
        async def go():
            clients = [await Client.connect(d, d.login("bench%d" % i, PASSWORD)) for i in range(args.members)]
            owner = clients[0]
            await owner.send({"type": "create_room", "name": "costs", "kind": "private", "ref": "c"})
            await owner.wait_for(lambda f: f.get("ref") == "c")
            for i in range(1, args.members):
                await owner.send({"type": "invite", "room": "costs", "user": "bench%d" % i, "ref": "i%d" % i})
                await owner.wait_for(lambda f: f.get("ref") == "i%d" % i)
            await asyncio.sleep(0.5)   # the invites' events delivered before the window opens (not a sync)
            for c in clients:
                c.pending.clear()
            before = (redis_info(d), metrics(d))
            started = time.monotonic()
            for k in range(args.messages):
                await owner.send({"type": "send", "room": "costs", "text": "m%06d " % k + "x" * 100, "ref": "s%d" % k})
                await owner.wait_for(lambda f: f.get("ref") == "s%d" % k and f["type"] == "ack", timeout=30)
            # Every member has every message before the window closes.
            for c in clients:
                n = 0
                while n < args.messages:
                    await c.wait_for(lambda f: f["type"] == "message" and f.get("room") == "costs", timeout=30)
                    n += 1
            elapsed = time.monotonic() - started
            after = (redis_info(d), metrics(d))
            for c in clients:
                await c.ws.close()
            return before, after, elapsed

        (b_redis, b_metrics), (a_redis, a_metrics), elapsed = asyncio.run(go())
        n = args.messages
        deltas = {k: a_redis[0].get(k, 0) - b_redis[0].get(k, 0) for k in a_redis[0]}
        calls = {k: round(v / n, 3) for k, v in sorted(deltas.items()) if not k.endswith("_usec") and v / n >= 0.001}
        # Redis's own time per message (the script's commands are counted inside EVALSHA's).
        redis_us = {k[:-5]: round(v / n, 1) for k, v in deltas.items() if k.endswith("_usec") and v > 0 and k[:-5] in ("evalsha", "eval", "wait")}
        coordinator = {k[1]: round((v - b_metrics.get(k, 0)) / n, 3) for k, v in a_metrics.items()
                       if k[0] == "coordinator" and k[1].startswith("securechat_rate_checks_total") and v - b_metrics.get(k, 0) > 0}
        out = {
            "members": args.members, "messages": n, "seconds": round(elapsed, 2),
            "redis_commands_per_message": calls,
            "redis_commands_per_message_total": round(sum(calls.values()), 3),
            "redis_usec_per_message": redis_us,
            "redis_bytes_in_per_message": round((a_redis[1] - b_redis[1]) / n, 1),
            "redis_bytes_out_per_message": round((a_redis[2] - b_redis[2]) / n, 1),
            "coordinator_rate_checks_per_message": coordinator,
        }
        print(json.dumps(out, sort_keys=True))
    finally:
        d.stop()
        shutil.rmtree(os.path.dirname(users), ignore_errors=True)


if __name__ == "__main__":
    main()
