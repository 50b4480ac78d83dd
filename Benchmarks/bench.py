"""Runs SecureChat's benchmark scenarios against real deployments on loopback
and prints a table and one JSON line per scenario (see docs/benchmarks.md).

    scripts/bench                 all scenarios at full size (several minutes)
    scripts/bench --quick         every scenario at toy size: proves the harness works (CI)
    scripts/bench fanout room     only these

Scenarios: fanout, overload (offered ~1.7x the best fan-out: nobody cut off, every ack delivered), room, idle,
storm, cpu (server CPU per delivery, every client a sender), coordinator, and the rooms ones (rooms_bench.py):
rooms (2,000 clients in 200 rooms of 10, every room active), isolation, churn."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "IntegrationTests"))
import conftest  # noqa: E402
import rooms_bench  # noqa: E402

BIN = conftest.BIN
PASSWORD = "bench-password-123"
FAST = ["--msg-burst", "100000", "--msg-per-second", "100000",
        "--login-user-per-minute", "100000", "--login-address-per-minute", "100000",
        # idle holds 80 sockets per account (16,000 over 200 users); the per-user cap is 20
        "--max-sockets-per-user", "1000000"]


def make_users(count, log_n=15):
    d = tempfile.mkdtemp(prefix="sc-bench-users-")
    path = os.path.join(d, "users.json")
    shutil.copy(os.path.join(conftest.ROOT, "users.json"), path)
    subprocess.run([os.path.join(BIN, "securechat"), "users", "add-many", "bench", str(count), "--users-file", path,
                    "--log-n", str(log_n)], input=PASSWORD + "\n", text=True, check=True, capture_output=True)
    return path


def sessions_file(d, count):
    path = os.path.join(d.state, "sessions.txt")
    with open(path, "w") as f:
        for i in range(count):
            f.write(d.login("bench%d" % i, PASSWORD).cookies["__Host-sc_session"] + "\n")
    return path


def generator(scenario, d, args, url=None):
    cmd = [os.path.join(BIN, "securechat-bench"), scenario, "--url", url or d.base, "--ca", d.ca,
           "--state-dir", d.state] + [str(a) for a in args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    sys.stdout.write(out.stdout)
    if out.returncode != 0:
        sys.stdout.write(out.stderr)
        problems = [l for l in d.log_text().splitlines() if " warning " in l or " error " in l]
        sys.stdout.write("deployment warnings (last 20 of %d):\n%s\n" % (len(problems), "\n".join(problems[-20:])))
        raise RuntimeError("%s failed" % scenario)
    return json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])


def cpu_seconds(pids):
    """(user, system) CPU time the given processes have used so far."""
    user = system = 0
    for pid in pids:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])  # utime and stime: fields 14 and 15 of stat
        system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def server_pids(d):
    """Every process of a deployment that serves: gateway(s), workers, coordinator, Redis."""
    names = ["gateway", "coordinator", "redis"] + ["worker-%d" % i for i in range(1, d.workers + 1)]
    return [p for p in (d.pid_of(n) for n in names) if p]


def cpu_per_delivery(d, sessions, clients, rate, seconds, name):
    """One fanout step with every client a sender; the CPU all server processes spent per delivery."""
    pids = server_pids(d)
    user0, system0 = cpu_seconds(pids)
    r = generator("fanout", d, ["--name", name, "--sessions", sessions, "--clients", clients, "--senders", clients,
                                "--seconds", seconds, "--rates", rate, "--server-pids", ",".join(map(str, pids))])
    user1, system1 = cpu_seconds(pids)
    step = r["steps"][0]
    delivered = max(1, step["delivered_per_s"] * seconds)
    r["server_cpu_s"] = round(user1 - user0 + system1 - system0, 3)
    r["server_cpu_us_per_delivery"] = round(1e6 * r["server_cpu_s"] / delivered, 2)
    print("  %s: %d deliveries/s, p99 %.1f ms, server CPU %.2f us per delivery (whole run, all %d processes), %.2f in the sending window"
          % (name, step["delivered_per_s"], step["p99_ms"], r["server_cpu_us_per_delivery"], len(pids),
             r.get("server_cpu_us_per_delivery_window", -1)))
    return r


def run(args):
    global FAST
    FAST = FAST + args.server_args.split()
    q = args.quick
    selected = args.scenarios or ["fanout", "overload", "room", "idle", "storm", "cpu", "coordinator", "rooms", "isolation", "churn"]
    users = make_users(10 if q else 200, log_n=10 if q else 15)
    results = []
    try:
        if "fanout" in selected:
            d = conftest.Deployment(users, workers=2, extra_args=FAST)
            try:
                s = sessions_file(d, 10 if q else 100)
                results.append(generator("fanout", d, ["--sessions", s, "--clients", 20 if q else 100,
                                                       "--senders", 2 if q else 10, "--seconds", 1 if q else 5,
                                                       "--rates", "1,2" if q else "10,25,40,60,80,100,150,200,250,300,400"]))
            finally:
                d.stop()
        if "room" in selected:
            d = conftest.Deployment(users, workers=2, extra_args=FAST)
            try:
                s = sessions_file(d, 10 if q else 200)
                results.append(generator("load", d, ["--name", "room", "--sessions", s, "--clients", 50 if q else 2000,
                                                     "--senders", 5, "--rate", 2, "--seconds", 2 if q else 30]))
            finally:
                d.stop()
        if "idle" in selected:
            gateways = 1 if q else 3
            d = conftest.Deployment(users, workers=2, extra_args=FAST + ["--gateways", str(gateways)])
            try:
                s = sessions_file(d, 10 if q else 200)
                results.append(generator("idle", d, ["--sessions", s, "--connections", 200 if q else args.idle_connections,
                                                     "--heartbeat-seconds", 1 if q else 5]))
            finally:
                d.stop()
        if "storm" in selected:
            d = conftest.Deployment(users, workers=2, extra_args=FAST)
            try:
                results.append(generator("storm", d, ["--users", 10 if q else 200, "--password", PASSWORD,
                                                      "--levels", "2,4" if q else "4,8,16,32,64",
                                                      "--per-level", 20 if q else 200]))
            finally:
                d.stop()
        if "overload" in selected:
            # Offered well past saturation (fanout's best on this machine is ~100,000 deliveries/s):
            # no reading client may be cut off, every acknowledged message must arrive, later.
            d = conftest.Deployment(users, workers=2, extra_args=FAST)
            try:
                s = sessions_file(d, 10 if q else 100)
                results.append(generator("overload", d, ["--sessions", s, "--clients", 20 if q else 100,
                                                        "--senders", 2 if q else 10, "--seconds", 1 if q else 10,
                                                        "--rate", 5 if q else args.overload_rate]))
            finally:
                d.stop()
        if "cpu" in selected:
            d = conftest.Deployment(users, workers=2, extra_args=FAST)
            try:
                n = 10 if q else 100
                s = sessions_file(d, n)
                for rate in ([1] if q else [1, 4]):
                    results.append(cpu_per_delivery(d, s, n, rate, 2 if q else 20, "cpu-%dmsg" % rate))
            finally:
                d.stop()
        if "rooms" in selected:
            # One user per client, so each is in exactly one room: a separate, quickly hashed users file.
            rooms, size = (5, 4) if q else (200, 10)
            many = make_users(rooms * size, log_n=10)
            d = conftest.Deployment(many, workers=2, extra_args=FAST + ["--request-burst", "100000", "--requests-per-second", "100000"])
            try:
                s = sessions_file(d, rooms * size)
                cookies = open(s).read().split()
                import requests
                def login(i):
                    session = requests.Session()
                    session.cookies.set("__Host-sc_session", cookies[i])
                    return session
                rooms_bench.make_rooms(d, login, rooms, size)
                rooms_bench.make_rooms(d, login, rooms, size, prefix="be-", encrypted=True)
                pids = server_pids(d)
                runs = [(rate, False) for rate in ([1] if q else args.rooms_rates)]
                runs += [(rate, True) for rate in ([1] if q else args.rooms_e2ee_rates)]
                for rate, e2ee in runs:
                    u0, s0 = cpu_seconds(pids)
                    r = generator("rooms", d, ["--name", "rooms-%s%gmsg" % ("e2ee-" if e2ee else "", rate), "--sessions", s,
                                               "--rooms", rooms, "--room-size", size, "--rate", rate, "--seconds", 2 if q else 20,
                                               "--server-pids", ",".join(map(str, pids))]
                                  + (["--e2ee", "--room-prefix", "be-"] if e2ee else []))
                    u1, s1 = cpu_seconds(pids)
                    r["server_cpu_s"] = round(u1 - u0 + s1 - s0, 3)
                    r["server_cpu_us_per_delivery"] = round(1e6 * r["server_cpu_s"] / max(1, r["delivered"]), 2)
                    print("  %s: %d deliveries/s, p99 %.1f ms, server CPU %.2f us per delivery (whole run), %.2f in the sending window"
                          % (r["scenario"], r["delivered_per_s"], r["p99_ms"], r["server_cpu_us_per_delivery"],
                             r.get("server_cpu_us_per_delivery_window", -1)))
                    results.append(r)
            finally:
                d.stop()
                shutil.rmtree(os.path.dirname(many), ignore_errors=True)
        if "isolation" in selected:
            d = conftest.Deployment(users, workers=2, extra_args=FAST + ["--request-burst", "100000", "--requests-per-second", "100000"])
            try:
                sessions = [d.login("bench%d" % i, PASSWORD) for i in range(8 if q else 20)]
                r = rooms_bench.isolation(d, sessions, members=4 if q else 10, rate=20, seconds=2 if q else 20)
                print("  isolation: worker-2 CPU %.3f s with the busy room vs %.3f s idle; worker-1 %.3f s vs %.3f s"
                      % (r["worker2_cpu_s_busy"], r["worker2_cpu_s_idle"], r["worker1_cpu_s_busy"], r["worker1_cpu_s_idle"]))
                results.append(r)
            finally:
                d.stop()
        if "churn" in selected:
            d = conftest.Deployment(users, workers=2, extra_args=FAST + ["--request-burst", "100000", "--requests-per-second", "100000"])
            try:
                steady = [d.login("bench%d" % i, PASSWORD) for i in range(4)]
                churners = [d.login("bench%d" % i, PASSWORD) for i in range(4, 8 if q else 20)]
                r = rooms_bench.churn(d, steady, churners, rate=50, seconds=2 if q else 20)
                print("  churn: %.1f joins+leaves/s, %d messages, %d delivered to churners while members, %d to non-members"
                      % (r["membership_changes_per_s"], r["messages"], r["delivered_to_churners_while_members"],
                         r["delivered_to_non_members"]))
                results.append(r)
            finally:
                d.stop()
        if "coordinator" in selected:
            d = conftest.Deployment(users, workers=1)
            try:
                results.append(generator("coordinator", d, ["--coordinator", os.path.join(d.state, "coordinator.sock"),
                                                            "--links", 2 if q else 4,
                                                            "--checks-per-second", 500 if q else 20000,
                                                            "--seconds", 1 if q else 5]))
            finally:
                d.stop()
    finally:
        shutil.rmtree(os.path.dirname(users), ignore_errors=True)
    print("\n== summary")
    for r in results:
        print(json.dumps(r, sort_keys=True))
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--idle-connections", type=int, default=16000)
    p.add_argument("--overload-rate", type=float, default=180,
                   help="overload: messages/s per sender (10 senders, 100 receivers: 180 offers 180,000 deliveries/s)")
    p.add_argument("--rooms-rates", type=float, nargs="*", default=[1, 5],
                   help="rooms: messages/s per room (one sender each); 5 gives 10,000 deliveries/s, as cpu-1msg does")
    p.add_argument("--rooms-e2ee-rates", type=float, nargs="*", default=[5],
                   help="rooms: the same in encrypted rooms (an opaque e2ee object per message)")
    p.add_argument("--server-args", default="", help="extra flags for every deployment, e.g. '--flush-coalesce-ms 2'")
    run(p.parse_args())
