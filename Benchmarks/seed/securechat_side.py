"""Starts a SecureChat deployment (release binaries from SECURECHAT_BIN), logs in N users,
runs the same Python harness the seed is measured with against it at each rate, stops it.

    SECURECHAT_BIN=<release bin folder> python Benchmarks/seed/securechat_side.py CLIENTS RATES SECONDS [PROCS]
    e.g. 100 1,4 20 2
"""
import json, os, subprocess, sys
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "Tests", "IntegrationTests"))
sys.path.insert(0, os.path.join(ROOT, "Benchmarks"))
import conftest, bench  # noqa

n = int(sys.argv[1]); rates = [float(r) for r in sys.argv[2].split(",")]; seconds = sys.argv[3]
procs = sys.argv[4] if len(sys.argv) > 4 else "1"
users = bench.make_users(n, log_n=10)
d = conftest.Deployment(users, workers=int(os.environ.get("WORKERS", "2")), extra_args=bench.FAST + [a for a in os.environ.get("EXTRA", "").split() if a])
try:
    cookies = os.path.join(d.state, "cookies.txt")
    with open(cookies, "w") as f:
        for i in range(n):
            f.write(d.login("bench%d" % i, bench.PASSWORD).cookies["__Host-sc_session"] + "\n")
    pids = ",".join(str(p) for p in bench.server_pids(d))
    for rate in rates:
        out = subprocess.run([os.path.join(os.environ.get("SEED_DIR", "/work/seedbench"), "venv", "bin", "python"), os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py"), "--target", "securechat",
                              "--url", d.base, "--cafile", d.ca, "--server-pids", pids, "--cookies", cookies,
                              "--clients", str(n), "--rate", str(rate), "--seconds", seconds, "--procs", procs],
                             capture_output=True, text=True, timeout=600)
        print("RATE", rate, out.stdout[-3000:], out.stderr[-1500:], flush=True)
finally:
    if os.environ.get("LOGTO"): open(os.environ["LOGTO"], "w").write(d.log_text())
    d.stop()
