#!/usr/bin/env python3
"""Chat-server load harness: same client logic against two targets.

  seed        Flask-SocketIO (bwhelan212/securechat455): POST /login JSON
              {username,password} -> Flask-Session cookie `session`; Socket.IO
              (websocket transport) event "message" carries a chat line; the
              server re-emits "message" = "<user>: <text>" with broadcast=True
              (every connected client, sender included).
  securechat  wss://HOST/ws with Cookie: __Host-sc_session=...; first frame welcome;
              send {"type":"send","text","ref"} -> ack to sender, {"type":
              "message",...} to every connected client (sender included).

Every client is also a sender; each sends R msg/s for S s on an absolute
schedule (client c offset by c/(N*R) so sends are spread evenly).  Each message
text embeds "BM|<sender>|<seq>|<monotonic send time>" (CLOCK_MONOTONIC is
system-wide on Linux, so it is comparable across --procs worker processes).

Server CPU = sum(utime+stime) from /proc/PID/stat over --server-pids, sampled by
the coordinator just before T0 (first scheduled send) and right after the last
worker reports that all of its expected deliveries arrived (or the deadline).
A higher-resolution cross-check from /proc/PID/task/*/schedstat is also given.
"""
import argparse
import array
import asyncio
import json
import math
import multiprocessing as mp
import os
import ssl
import sys
import time
from multiprocessing.connection import wait as mp_wait

CLK_TCK = os.sysconf("SC_CLK_TCK")
MARK = "BM|"
RUN = os.urandom(4).hex()  # refs unique per run: SecureChat dedupes a (user, ref) for 180 s


# ----------------------------------------------------------------- server CPU
def _read_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state); utime = field 14, stime = field 15
    return int(rest[11]) + int(rest[12])


def _read_sched_ns(pid):
    tot = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    tot += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
    except FileNotFoundError:
        return None
    return tot


def _descendants(pids):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    out, todo = [], list(pids)
    while todo:
        p = todo.pop()
        if p not in out:
            out.append(p)
            todo.extend(children.get(p, []))
    return out


def sample_cpu(pids):
    s = {}
    for p in pids:
        try:
            s[p] = (_read_stat(p), _read_sched_ns(p))
        except (FileNotFoundError, ProcessLookupError):
            s[p] = None
    return s


# -------------------------------------------------------------------- helpers
def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def make_ssl(a):
    if not a["url"].startswith("https"):
        return None
    ctx = ssl.create_default_context(cafile=a["cafile"]) if a["cafile"] else ssl.create_default_context()
    if a["insecure"]:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Stats:
    def __init__(self, n_clients_total, msgs_per_client, my_cids):
        self.M = msgs_per_client
        self.total_msgs = n_clients_total * msgs_per_client
        self.seen = {c: bytearray(self.total_msgs) for c in my_cids}
        self.remaining = self.total_msgs * len(my_cids)
        self.lat = array.array("d")
        self.send_lag = array.array("d")
        self.ack_lat = array.array("d")
        self.sent_at = {}            # ref -> send time (securechat acks)
        self.dups = self.foreign = self.bad_sender = self.acks = self.other = 0
        self.t_last = None
        self.done = asyncio.Event()
        if self.remaining == 0:
            self.done.set()

    def on_text(self, cid, text, t_recv, from_user=None):
        i = text.find(MARK)
        if i < 0:
            self.foreign += 1
            return
        try:
            _, s, k, ts = text[i:].split("|", 4)[:4]
            s, k, ts = int(s), int(k), float(ts.split()[0])
        except ValueError:
            self.foreign += 1
            return
        if from_user is not None and from_user != f"{s}":
            self.bad_sender += 1          # e.g. seed session fell back to "Guest"
        idx = s * self.M + k
        seen = self.seen[cid]
        if seen[idx]:
            self.dups += 1
            return
        seen[idx] = 1
        self.lat.append(t_recv - ts)
        self.remaining -= 1
        if self.remaining == 0:
            self.t_last = t_recv
            self.done.set()


# ------------------------------------------------------------------- clients
class SeedClient:
    def __init__(self, cid, a, st, sslctx):
        self.cid, self.a, self.st, self.ssl = cid, a, st, sslctx
        self.user = f"{a['user_prefix']}{cid + a['user_offset']}"
        self.sender_of = {}   # username -> sender index (for from-user check)

    async def setup(self):
        import aiohttp
        import socketio
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),   # allow cookies for an IP host
            connector=aiohttp.TCPConnector(ssl=self.ssl if self.ssl else False))
        r = await self.http.post(self.a["url"] + "/login",
                                 json={"username": self.user, "password": self.a["password"]})
        j = await r.json(content_type=None)
        if not j.get("success"):
            raise RuntimeError(f"login failed for {self.user}: {j}")
        self.sio = socketio.AsyncClient(
            http_session=self.http, handle_sigint=False, reconnection=False,
            websocket_extra_options={"ssl": self.ssl} if self.ssl else {})
        prefix, off = self.a["user_prefix"], self.a["user_offset"]

        def on_message(data):
            t = time.monotonic()
            if isinstance(data, str) and ": " in data:
                u, _, body = data.partition(": ")
                frm = str(int(u[len(prefix):]) - off) if u.startswith(prefix) and u[len(prefix):].isdigit() else u
                self.st.on_text(self.cid, body, t, frm)
            else:
                self.st.other += 1
        self.sio.on("message", on_message)
        await self.sio.connect(self.a["url"], transports=["websocket"], wait_timeout=10)

    async def send(self, text, ref):
        await self.sio.send(text)

    async def close(self):
        try:
            await self.sio.disconnect()
        finally:
            await self.http.close()


class SCClient:
    def __init__(self, cid, a, st, sslctx, cookie):
        self.cid, self.a, self.st, self.ssl, self.cookie = cid, a, st, sslctx, cookie

    async def setup(self):
        from websockets.asyncio.client import connect
        base = self.a["url"]
        wsurl = ("wss" if base.startswith("https") else "ws") + base[base.index("://"):].rstrip("/") + self.a["ws_path"]
        self.ws = await connect(wsurl, ssl=self.ssl, open_timeout=10, max_size=2 ** 22,
                                compression=None if self.a["ws_compression"] == "none" else "deflate",
                                additional_headers={"Cookie": f"__Host-sc_session={self.cookie}"})
        first = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if first.get("type") != "welcome":
            raise RuntimeError(f"client {self.cid}: first frame not welcome: {first}")
        self.rx = asyncio.create_task(self.reader())

    async def reader(self):
        st = self.st
        try:
            async for raw in self.ws:
                t = time.monotonic()
                m = json.loads(raw)
                ty = m.get("type")
                if ty == "message":
                    st.on_text(self.cid, m.get("text", ""), t)
                elif ty == "ack":
                    st.acks += 1
                    ts = st.sent_at.pop(m.get("ref"), None)
                    if ts is not None:
                        st.ack_lat.append(t - ts)
                else:
                    st.other += 1
        except Exception as e:  # connection closed etc.
            if not getattr(self, "closing", False):
                print(f"client {self.cid} reader ended: {e!r}", file=sys.stderr)

    async def send(self, text, ref):
        self.st.sent_at[ref] = time.monotonic()
        await self.ws.send(json.dumps({"type": "send", "text": text, "ref": ref}))

    async def close(self):
        self.closing = True
        await self.ws.close()
        self.rx.cancel()


# -------------------------------------------------------------------- worker
async def worker_async(conn, wid, cids, a):
    N, R, M = a["clients"], a["rate"], a["msgs_per_client"]
    st = Stats(N, M, cids)
    sslctx = make_ssl(a)
    if a["target"] == "seed":
        clients = [SeedClient(c, a, st, sslctx) for c in cids]
    else:
        clients = [SCClient(c, a, st, sslctx, a["cookies"][c]) for c in cids]
    sem = asyncio.Semaphore(a["connect_concurrency"])

    async def setup(cl):
        async with sem:
            await cl.setup()
    res = await asyncio.gather(*(setup(c) for c in clients), return_exceptions=True)
    errs = [repr(r) for r in res if isinstance(r, BaseException)]
    loop = asyncio.get_running_loop()
    conn.send(("ready", wid, errs))
    msg = await loop.run_in_executor(None, conn.recv)
    if msg[0] != "go":
        for c in clients:
            await c.close()
        return
    T0 = msg[1]
    pad = "x" * a["pad"]
    send_errs = []

    async def sender(cl):
        off = (cl.cid / N) / R
        for k in range(M):
            t_s = T0 + off + k / R
            d = t_s - time.monotonic()
            if d > 0:
                await asyncio.sleep(d)
            now = time.monotonic()
            st.send_lag.append(now - t_s)
            try:
                await cl.send(f"{MARK}{cl.cid}|{k}|{now:.6f} {pad}", f"{RUN}-{cl.cid}-{k}")
            except Exception as e:
                send_errs.append(repr(e))
                return

    d = T0 - time.monotonic()
    if d > 0:
        await asyncio.sleep(d)
    cpu0, w0 = time.process_time(), time.monotonic()
    tasks = [asyncio.create_task(sender(c)) for c in clients]
    deadline = T0 + a["seconds"] + a["timeout"]
    try:
        await asyncio.wait_for(st.done.wait(), max(0.0, deadline - time.monotonic()))
        complete = True
    except asyncio.TimeoutError:
        complete = False
    cpu1, w1 = time.process_time(), time.monotonic()
    conn.send(("done", wid, complete))
    for t in tasks:
        t.cancel()
    conn.send(("result", wid, {
        "complete": complete, "t_last": st.t_last, "lat": st.lat.tobytes(),
        "send_lag": st.send_lag.tobytes(), "ack_lat": st.ack_lat.tobytes(),
        "received": len(st.lat), "dups": st.dups, "foreign": st.foreign,
        "bad_sender": st.bad_sender, "acks": st.acks, "other": st.other,
        "send_errors": send_errs[:5], "n_send_errors": len(send_errs),
        "cpu_s": cpu1 - cpu0, "wall_s": w1 - w0, "clients": len(cids)}))
    for c in clients:
        try:
            await c.close()
        except Exception:
            pass


def worker_main(conn, wid, cids, a):
    try:
        asyncio.run(worker_async(conn, wid, cids, a))
    except Exception as e:
        try:
            conn.send(("error", wid, repr(e)))
        except Exception:
            pass
        raise


# --------------------------------------------------------------- coordinator
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["seed", "securechat"], required=True)
    ap.add_argument("--url", required=True, help="base URL, e.g. https://127.0.0.1:PORT")
    ap.add_argument("--cafile", help="CA cert (PEM) to verify the server")
    ap.add_argument("--insecure", action="store_true", help="skip TLS verification")
    ap.add_argument("--server-pids", required=True, help="comma-separated server PIDs (incl. Redis etc.)")
    ap.add_argument("--pid-children", action="store_true", help="also count descendants of --server-pids")
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--rate", type=float, default=1.0, help="messages/s per client")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--procs", type=int, default=1, help="client worker processes")
    ap.add_argument("--timeout", type=float, default=10.0, help="drain deadline after last send (s)")
    ap.add_argument("--lead", type=float, default=1.0, help="delay between all-connected and T0 (s)")
    ap.add_argument("--pad", type=int, default=0, help="extra payload chars per message")
    ap.add_argument("--connect-concurrency", type=int, default=10)
    ap.add_argument("--saturation-threshold", type=float, default=0.85)
    # seed
    ap.add_argument("--user-prefix", default="bench")
    ap.add_argument("--user-offset", type=int, default=0)
    ap.add_argument("--password", default="benchpw")
    # securechat
    ap.add_argument("--cookies", help="file: one __Host-sc_session value per line, one user each")
    ap.add_argument("--ws-path", default="/ws")
    ap.add_argument("--ws-compression", choices=["none", "deflate"], default="none")
    args = ap.parse_args()

    a = dict(vars(args))
    a["url"] = a["url"].rstrip("/")
    N, K = args.clients, max(1, min(args.procs, args.clients))
    M = int(round(args.rate * args.seconds))
    a["msgs_per_client"] = M
    if args.target == "securechat":
        if not args.cookies:
            ap.error("--cookies is required for --target securechat")
        with open(args.cookies) as f:
            cookies = [ln.strip() for ln in f if ln.strip()]
        if len(cookies) < N:
            ap.error(f"need {N} cookies, file has {len(cookies)}")
        a["cookies"] = cookies[:N]
    pids = [int(p) for p in args.server_pids.replace(" ", "").split(",") if p]
    if args.pid_children:
        pids = _descendants(pids)

    ctx = mp.get_context("fork")
    chunks = [list(range(N))[i::K] for i in range(K)]
    conns, procs = [], []
    for wid, cids in enumerate(chunks):
        pc, cc = ctx.Pipe()
        p = ctx.Process(target=worker_main, args=(cc, wid, cids, a), daemon=True)
        p.start()
        conns.append(pc)
        procs.append(p)

    def recv_all(kind, timeout):
        got, pending = {}, {id(c): c for c in conns}
        end = time.monotonic() + timeout
        while pending:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waiting for {kind}: {len(pending)} workers silent")
            for c in mp_wait(list(pending.values()), left):
                m = c.recv()
                if m[0] == "error":
                    raise RuntimeError(f"worker {m[1]} failed: {m[2]}")
                if m[0] != kind:
                    raise RuntimeError(f"expected {kind}, got {m[0]}")
                got[m[1]] = m[2]
                del pending[id(c)]
        return got

    try:
        ready = recv_all("ready", 60 + N)
        errs = [e for v in ready.values() for e in v]
        if errs:
            for c in conns:
                c.send(("abort",))
            raise RuntimeError(f"{len(errs)} client(s) failed to connect: {errs[:3]}")
        T0 = time.monotonic() + args.lead
        for c in conns:
            c.send(("go", T0))
        d = T0 - 0.003 - time.monotonic()
        if d > 0:
            time.sleep(d)
        cpu0, tA = sample_cpu(pids), time.monotonic()
        done = recv_all("done", args.seconds + args.timeout + args.lead + 30)
        cpu1, tB = sample_cpu(pids), time.monotonic()
        results = recv_all("result", 60)
    finally:
        for p in procs:
            p.join(15)
            if p.is_alive():
                p.terminate()

    lat, lag, ack = array.array("d"), array.array("d"), array.array("d")
    agg = {k: 0 for k in ("received", "dups", "foreign", "bad_sender", "acks", "other", "n_send_errors")}
    t_last, workers = [], []
    for wid in sorted(results):
        r = results[wid]
        for arr, key in ((lat, "lat"), (lag, "send_lag"), (ack, "ack_lat")):
            arr.frombytes(r[key])
        for k in agg:
            agg[k] += r[k]
        if r["t_last"]:
            t_last.append(r["t_last"])
        workers.append({"worker": wid, "clients": r["clients"], "complete": r["complete"],
                        "cpu_s": round(r["cpu_s"], 3), "wall_s": round(r["wall_s"], 3),
                        "cpu_frac": round(r["cpu_s"] / r["wall_s"], 3) if r["wall_s"] else None,
                        "send_errors": r["send_errors"]})
    expected = N * N * M
    complete = all(done.values()) and agg["received"] == expected
    lat_ms = sorted(x * 1e3 for x in lat)
    lag_ms = sorted(x * 1e3 for x in lag)
    ack_ms = sorted(x * 1e3 for x in ack)
    per_pid, cpu_s, sched_s, missing = {}, 0.0, 0.0, []
    for p in pids:
        if cpu0.get(p) is None or cpu1.get(p) is None:
            missing.append(p)
            continue
        c = (cpu1[p][0] - cpu0[p][0]) / CLK_TCK
        sc = (cpu1[p][1] - cpu0[p][1]) / 1e9 if cpu0[p][1] is not None and cpu1[p][1] is not None else None
        per_pid[str(p)] = {"cpu_s": round(c, 3), "schedstat_s": round(sc, 4) if sc is not None else None}
        cpu_s += c
        sched_s += sc or 0.0
    last = max(t_last) if (complete and t_last) else tB
    deliv_window = last - T0
    recv = agg["received"]
    out = {
        "target": args.target, "url": args.url, "clients": N, "rate_per_client": args.rate,
        "seconds": args.seconds, "procs": K, "msgs_per_client": M, "messages_sent_expected": N * M,
        "deliveries_expected": expected, "deliveries_received": recv, "complete": complete,
        "offered_deliveries_per_s": N * N * args.rate,
        # received / max(T0->last delivery, --seconds): equals the offered rate when
        # the server keeps up, drops below it when deliveries lag behind sends
        "deliveries_per_s": round(recv / max(deliv_window, args.seconds), 1) if deliv_window > 0 else None,
        "delivery_window_s": round(deliv_window, 3),
        "cpu_window_s": round(tB - tA, 3),
        "server_pids": pids, "server_pids_missing": missing,
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_us_per_delivery": round(cpu_s * 1e6 / recv, 2) if recv else None,
        "server_cpu_s_schedstat": round(sched_s, 4),
        "server_cpu_us_per_delivery_schedstat": round(sched_s * 1e6 / recv, 2) if recv else None,
        "server_cpu_util": round(cpu_s / (tB - tA), 3) if tB > tA else None,
        "per_pid": per_pid,
        "latency_ms": {"p50": pct(lat_ms, 50), "p99": pct(lat_ms, 99), "max": lat_ms[-1] if lat_ms else None},
        "send_lag_ms": {"p50": pct(lag_ms, 50), "p99": pct(lag_ms, 99), "max": lag_ms[-1] if lag_ms else None},
        "ack_latency_ms": {"p50": pct(ack_ms, 50), "p99": pct(ack_ms, 99)} if ack_ms else None,
        "duplicates": agg["dups"], "foreign_msgs": agg["foreign"], "wrong_sender": agg["bad_sender"],
        "acks": agg["acks"], "other_frames": agg["other"], "send_errors": agg["n_send_errors"],
        "client_workers": workers,
        "client_saturated": any((w["cpu_frac"] or 0) >= args.saturation_threshold for w in workers),
    }
    for k in ("latency_ms", "send_lag_ms", "ack_latency_ms"):
        if out[k]:
            out[k] = {q: (round(v, 3) if v is not None else None) for q, v in out[k].items()}
    print(json.dumps(out, indent=1))
    return 0 if complete else 2


if __name__ == "__main__":
    sys.exit(main())
