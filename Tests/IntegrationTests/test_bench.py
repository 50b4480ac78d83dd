"""The benchmark harness at toy size (scripts/bench --quick): every scenario runs
end to end against real deployments and reports its figures. No timing is asserted."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_bench_quick_runs_every_scenario():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "Benchmarks", "bench.py"), "--quick"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = out.stdout.split("== summary", 1)[1]
    reports = {r["scenario"]: r for r in (json.loads(l) for l in summary.splitlines() if l.startswith("{"))}
    assert set(reports) >= {"fanout", "overload", "room", "idle", "storm", "cpu-1msg", "coordinator",
                            "rooms-1msg", "isolation", "churn"}
    assert reports["overload"]["all_acked_delivered"] and reports["overload"]["closed"] == 0, reports["overload"]
    for name in ("fanout", "room", "cpu-1msg"):
        r = reports[name]
        assert r["delivered"] > 0 and r["delivered"] == r["expected_deliveries"], r
        assert r["errors"] == 0
    assert reports["idle"]["heartbeats"] == reports["idle"]["connections"] == 200
    assert reports["idle"]["rss_after_kib"] > 0
    assert reports["storm"]["steps"][0]["ok"] > 0
    assert reports["coordinator"]["checks"] > 0
    assert reports["cpu-1msg"]["server_cpu_us_per_delivery"] > 0
    r = reports["rooms-1msg"]
    assert r["delivered"] > 0 and r["delivered"] == r["expected_deliveries"] and r["server_cpu_s_window"] >= 0, r
    assert reports["isolation"]["busy_room_frames_at_worker2_clients"] == 0, reports["isolation"]
    assert reports["churn"]["joins"] > 0 and reports["churn"]["delivered_to_non_members"] == 0, reports["churn"]
