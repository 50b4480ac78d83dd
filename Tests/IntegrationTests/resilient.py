"""A client that behaves as the web client does: it reconnects with backoff
and jitter, replays with `sync` from the last id it showed, shows each message
id once and in order, and resends unacknowledged messages with the same ref.
Used by the fault-injection tests and the chaos run."""
import asyncio
import json
import os
import random
import time

import websockets

from wsclient import id_key


class ResilientClient:
    def __init__(self, deployment, session, name):
        self.deployment = deployment
        self.cookie = session.cookies["__Host-sc_session"]
        self.name = name
        self.shown = []            # message ids shown, in order
        self.last_id = None
        self.pending = {}          # ref -> text, sent but not acknowledged
        self.acked = {}            # ref -> id
        self.errors = []
        self.close_codes = []
        self.workers = []
        self.online = set()
        self.ws = None
        self.live = asyncio.Event()
        self.down_since = None
        self.outages = []          # seconds from losing a connection to being live (synced) again
        self.live_at = []          # monotonic times it went live (synced)
        self.seq = 0
        self.token = os.urandom(4).hex()
        self.sent_at = {}          # ref -> monotonic time send() was called
        self.ack_times = {}        # ref -> monotonic time of its first ack
        self.stop = False
        self.logged_out = False

    # -- showing messages, as protocol.md asks of a client
    def _show(self, m):
        if self.last_id is None or id_key(m["id"]) > id_key(self.last_id):
            self.shown.append(m["id"])
            self.last_id = m["id"]

    async def _connect(self):
        headers = {"Cookie": "__Host-sc_session=" + self.cookie, "Origin": self.deployment.origin}
        host = getattr(self.deployment, "host", "127.0.0.1")
        return await websockets.connect("wss://%s:%d/ws" % (host, self.deployment.port),
                                        ssl=self.deployment.ssl_context(), additional_headers=headers,
                                        open_timeout=5, ping_interval=None, max_size=2 ** 22)

    async def run(self):
        backoff = 0.05
        while not self.stop:
            try:
                ws = await self._connect()
            except Exception:
                await asyncio.sleep(backoff / 2 + random.random() * backoff / 2)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            self.ws = ws
            self.workers.append(ws.response.headers.get("X-SecureChat-Worker"))
            try:
                await self._session(ws)
            except websockets.ConnectionClosed as e:
                self.close_codes.append(e.rcvd.code if e.rcvd else None)
                if e.rcvd and e.rcvd.code == 4001:
                    self.logged_out = True
                    return
            except Exception as e:  # a broken socket is a closed one here
                self.close_codes.append(repr(e))
            finally:
                self.ws = None
                if self.live.is_set():
                    self.live.clear()
                    self.down_since = time.monotonic()
            if not self.stop:
                await asyncio.sleep(0.02 + random.random() * 0.05)

    async def _session(self, ws):
        syncing = False
        buffered = []
        while True:
            f = json.loads(await ws.recv())
            t = f["type"]
            if t == "welcome":
                self.online = set(f["online"])
                if self.last_id is None:
                    for m in f["history"]:
                        self._show(m)
                    self._went_live()
                else:
                    syncing = True
                    buffered = list(f["history"])
                    await ws.send(json.dumps({"type": "sync", "since": self.last_id}))
            elif t == "message":
                if syncing:
                    buffered.append(f)
                else:
                    self._show(f)
            elif t == "synced":
                syncing = False
                for m in sorted(buffered, key=lambda m: id_key(m["id"])):
                    self._show(m)
                buffered = []
                self._went_live()
            elif t == "ack":
                if f.get("ref") in self.pending:
                    del self.pending[f["ref"]]
                self.acked[f["ref"]] = f["id"]
                self.ack_times.setdefault(f["ref"], time.monotonic())
            elif t == "error":
                self.errors.append(f)
                ref = f.get("ref")
                if ref in self.pending and f["code"] in ("unavailable", "rate_limited"):
                    delay = f.get("retry_after_ms", 1000) / 1000.0
                    # `ref` bound now: the variable is reused by the next frame.
                    asyncio.get_running_loop().call_later(
                        delay, lambda ref=ref: asyncio.ensure_future(self._send_raw(ref, self.pending[ref]))
                        if ref in self.pending else None)
            elif t == "presence":
                (self.online.add if f["online"] else self.online.discard)(f["user"])

    def _went_live(self):
        self.live_at.append(time.monotonic())
        if self.down_since is not None:
            self.outages.append(time.monotonic() - self.down_since)
            self.down_since = None
        self.live.set()
        # Unacknowledged sends go again with the same ref: stored once.
        for ref, text in list(self.pending.items()):
            asyncio.ensure_future(self._send_raw(ref, text))

    async def _send_raw(self, ref, text):
        ws = self.ws
        if ws is not None:
            try:
                await ws.send(json.dumps({"type": "send", "text": text, "ref": ref}))
            except websockets.ConnectionClosed:
                pass

    async def send(self, text):
        self.seq += 1
        # Unique across clients of the same name and runs against the same Redis (the server
        # answers a ref it saw in the last 180 s with the first message's ack).
        ref = "%s-%s-%d" % (self.name, self.token, self.seq)
        self.pending[ref] = text
        self.sent_at[ref] = time.monotonic()
        if self.live.is_set():
            await self._send_raw(ref, text)
        return ref


async def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


async def stop_all(clients, tasks):
    """Every client stopped and its connection closed, every task cancelled."""
    for c in clients:
        c.stop = True
        if c.ws:
            await c.ws.close()
    for t in tasks:
        t.cancel()


async def everyone_has(clients, acked, timeout=60):
    """Every client shows every acknowledged message, in order, once."""
    await wait_until(lambda: all(set(r.shown) >= set(acked) for r in clients), timeout, "every client has every message")
    for c in clients:
        mine = [i for i in c.shown if i in set(acked)]
        assert mine == acked, c.name            # no gap, nothing twice, in order
        assert len(c.shown) == len(set(c.shown))
