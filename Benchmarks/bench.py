"""Runs SecureChat's benchmark scenarios against real deployments on loopback
and prints a table and one JSON line per scenario (see docs/benchmarks.md).

    scripts/bench                 all scenarios at full size (several minutes)
    scripts/bench --quick         every scenario at toy size: proves the harness works (CI)
    scripts/bench fanout room     only these

Scenarios: fanout, room, idle, storm, splice (gateway vs nginx), coordinator; and, only when named,
syscalls (system calls per delivery of each proxy at one equal load; needs Debian's linux-perf)."""
import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "IntegrationTests"))
import conftest  # noqa: E402

BIN = conftest.BIN
PASSWORD = "bench-password-123"
FAST = ["--msg-burst", "100000", "--msg-per-second", "100000",
        "--login-user-per-minute", "100000", "--login-address-per-minute", "100000"]


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
            f.write(d.login("bench%d" % i, PASSWORD).cookies["sc_session"] + "\n")
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


def nginx_proxy(d, worker_socket, port):
    """Debian's nginx as a TLS WebSocket proxy straight to one worker, TLS set up like the gateway's."""
    conf_dir = tempfile.mkdtemp(prefix="sc-nginx-")
    conf = os.path.join(conf_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""
user root;
worker_processes auto;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 20000; }
worker_rlimit_nofile 20000;
http {
  access_log off;
  server {
    listen 127.0.0.1:%(port)d ssl;
    ssl_certificate %(cert)s;
    ssl_certificate_key %(key)s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    location /ws {
      proxy_pass http://unix:%(sock)s:/ws;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host $host;
      proxy_buffering off;
      proxy_read_timeout 3600s;
    }
  }
}
""" % {"dir": conf_dir, "port": port, "cert": d.ca, "key": os.path.join(d.state, "tls", "key.pem"), "sock": worker_socket})
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", conf_dir, "-g", "daemon off;"], start_new_session=True)
    conftest.wait_until(lambda: _port_open(port), 10, what="nginx listening")
    return proc, conf_dir


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


def nginx_pids(proc):
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return [proc.pid] + [int(p) for p in out]


def measured(run, pids, step_seconds):
    """Runs a fanout and adds the proxy's CPU cost per 1,000 messages delivered over all its steps."""
    user0, system0 = cpu_seconds(pids)
    r = run()
    user1, system1 = cpu_seconds(pids)
    user, system = user1 - user0, system1 - system0
    delivered = max(1, sum(st["delivered_per_s"] for st in r["steps"]) * step_seconds)
    r["proxy_cpu_s"] = round(user + system, 2)
    r["proxy_cpu_ms_per_1000"] = round(1e6 * (user + system) / delivered, 3)
    r["proxy_user_ms_per_1000"] = round(1e6 * user / delivered, 3)
    r["proxy_system_ms_per_1000"] = round(1e6 * system / delivered, 3)
    return r


SYSCALL_EVENTS = ["raw_syscalls:sys_enter", "syscalls:sys_enter_read", "syscalls:sys_enter_recvfrom",
                  "syscalls:sys_enter_write", "syscalls:sys_enter_sendto", "syscalls:sys_enter_epoll_wait",
                  "context-switches"]


CGROUP_CPU = "/sys/fs/cgroup/cpu"


class CpuCap:
    """Caps a set of processes to a share of one CPU (a cgroup v1 CFS quota), so that a proxy
    under test, not the worker and the generator that share the machine with it, is the limit."""

    def __init__(self, name, share, pids):
        self.path = os.path.join(CGROUP_CPU, name)
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, "cpu.cfs_period_us"), "w") as f:
            f.write("100000")
        with open(os.path.join(self.path, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(int(share * 100000)))
        for pid in pids:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    @staticmethod
    def available():
        return os.access(CGROUP_CPU, os.W_OK)

    def release(self):
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            pids = f.read().split()
        for pid in pids:
            try:
                with open(os.path.join(CGROUP_CPU, "cgroup.procs"), "w") as f:
                    f.write(pid)
            except OSError:
                pass  # exited meanwhile
        os.rmdir(self.path)


def _event_name(event):
    name = event.split(":")[-1]
    return "all" if name == "sys_enter" else name.replace("sys_enter_", "")


def counted(run, pids, seconds):
    """Runs a fanout step and counts the proxy's system calls (perf tracepoints) over `seconds` of its middle."""
    counts = {}

    def count():
        time.sleep(3)
        r = subprocess.run(["perf", "stat", "-x,", "-e", ",".join(SYSCALL_EVENTS), "-p", ",".join(map(str, pids)),
                            "--", "sleep", str(seconds)], capture_output=True, text=True)
        for line in r.stderr.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].isdigit():
                counts[_event_name(fields[2])] = int(fields[0])

    t = threading.Thread(target=count)
    t.start()
    r = run()
    t.join()
    delivered = r["steps"][0]["delivered_per_s"] * seconds
    r["per_delivery"] = {k: round(v / max(1, delivered), 3) for k, v in counts.items()}
    return r


@contextlib.contextmanager
def behind_both_proxies(users):
    """One worker behind our gateway and behind nginx: yields (deployment, nginx process, nginx URL)."""
    d = conftest.Deployment(users, workers=1, extra_args=FAST)
    try:
        port = conftest.free_port()
        proc, conf_dir = nginx_proxy(d, os.path.join(d.state, "worker-1.sock"), port)
        try:
            yield d, proc, "https://127.0.0.1:%d" % port
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
            shutil.rmtree(conf_dir, ignore_errors=True)
    finally:
        d.stop()


PROXY_FIELDS = ("delivered_per_s", "rate_per_sender", "p50_ms", "p99_ms", "proxy_cpu_ms_per_1000",
                "proxy_user_ms_per_1000", "proxy_system_ms_per_1000")


def _port_open(port):
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run(args):
    q = args.quick
    selected = args.scenarios or ["fanout", "room", "idle", "storm", "splice", "coordinator"]
    users = make_users(10 if q else 200, log_n=10 if q else 15)
    results = []
    try:
        if "fanout" in selected:
            d = conftest.Deployment(users, workers=2, extra_args=FAST)
            try:
                s = sessions_file(d, 10 if q else 100)
                results.append(generator("fanout", d, ["--sessions", s, "--clients", 20 if q else 100,
                                                       "--senders", 2 if q else 10, "--seconds", 1 if q else 5,
                                                       "--rates", "1,2" if q else "10,25,40,60,80,100,150,200"]))
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
        if "splice" in selected:
            with behind_both_proxies(users) as (d, proc, nginx_url):
                s = sessions_file(d, 10 if q else 100)
                capped = args.proxy_cpu > 0 and CpuCap.available() and not q
                rates = "5,10,15,20,25,30,35,40,50,60,80" if capped else "10,20,40,60,80,100,125,150,200"
                seconds = 1 if q else 5
                steps = ["--sessions", s, "--clients", 20 if q else 100, "--senders", 2 if q else 10,
                         "--seconds", seconds, "--rates", "1,2" if q else rates]
                caps = []
                if capped:
                    # Each proxy gets the same CPU budget, so that it saturates before the rest.
                    caps = [CpuCap("securechat-bench-gateway", args.proxy_cpu, [d.pid_of("gateway")]),
                            CpuCap("securechat-bench-nginx", args.proxy_cpu, nginx_pids(proc))]
                try:
                    ours = measured(lambda: generator("fanout", d, ["--name", "splice-gateway"] + steps),
                                    [d.pid_of("gateway")], seconds)
                    theirs = measured(lambda: generator("fanout", d, ["--name", "splice-nginx"] + steps, url=nginx_url),
                                      nginx_pids(proc), seconds)
                finally:
                    for cap in caps:
                        cap.release()
                # p99 compared at the highest rate both sustained.
                common = min(ours["rate_per_sender"], theirs["rate_per_sender"])
                p99_at = lambda r: next((st["p99_ms"] for st in r["steps"] if st["rate_per_sender"] == common), None)
                ratio = {
                    "scenario": "splice",
                    "proxy_cpu_share": args.proxy_cpu if capped else None,
                    "delivered_per_s_ratio": round(ours["delivered_per_s"] / max(1, theirs["delivered_per_s"]), 3),
                    "compared_at_rate_per_sender": common,
                    "p99_at_common_rate_ratio": round((p99_at(ours) or 0) / max(0.001, p99_at(theirs) or 0.001), 3),
                    # CPU the proxy spent per delivered message over the whole run: which proxy saturates first
                    # when it, not the shared worker and generator, is the limit.
                    "proxy_cpu_per_delivery_ratio": round(ours["proxy_cpu_ms_per_1000"] / max(0.001, theirs["proxy_cpu_ms_per_1000"]), 3),
                    "gateway": {k: ours.get(k) for k in PROXY_FIELDS},
                    "nginx": {k: theirs.get(k) for k in PROXY_FIELDS},
                }
                print("\n== splice (ours / nginx)\n  best delivered/s ratio %.3f, p99 ratio at %s msg/s per sender %.3f,"
                      " proxy CPU per delivery ratio %.3f (%.3f vs %.3f ms per 1,000)" %
                      (ratio["delivered_per_s_ratio"], common, ratio["p99_at_common_rate_ratio"],
                       ratio["proxy_cpu_per_delivery_ratio"], ours["proxy_cpu_ms_per_1000"], theirs["proxy_cpu_ms_per_1000"]))
                print(json.dumps(ratio, sort_keys=True))
                results += [ours, theirs, ratio]
        if "syscalls" in selected:
            if not shutil.which("perf"):
                raise SystemExit("the syscalls scenario needs perf: apt-get install -y linux-perf")
            with behind_both_proxies(users) as (d, proc, nginx_url):
                s = sessions_file(d, 10 if q else 100)
                step = ["--sessions", s, "--clients", 20 if q else 100, "--senders", 2 if q else 10,
                        "--seconds", 5 if q else 14, "--rates", "2" if q else "80"]
                window = 1 if q else 8
                ours = counted(lambda: generator("fanout", d, ["--name", "syscalls-gateway"] + step), [d.pid_of("gateway")], window)
                theirs = counted(lambda: generator("fanout", d, ["--name", "syscalls-nginx"] + step, url=nginx_url),
                                 nginx_pids(proc), window)
                summary = {"scenario": "syscalls", "gateway": ours["per_delivery"], "nginx": theirs["per_delivery"],
                           "delivered_per_s": {"gateway": ours["delivered_per_s"], "nginx": theirs["delivered_per_s"]}}
                print("\n== system calls per delivered message (ours | nginx)")
                for k in map(_event_name, SYSCALL_EVENTS):
                    print("  %-20s %8s | %s" % (k, ours["per_delivery"].get(k), theirs["per_delivery"].get(k)))
                print(json.dumps(summary, sort_keys=True))
                results.append(summary)
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
    p.add_argument("--proxy-cpu", type=float, default=0.25,
                   help="splice: cap each proxy to this share of one CPU (cgroup v1, needs root); 0 for no cap")
    run(p.parse_args())
