"""A small TLS WebSocket client for the tests (the `websockets` library)."""
import asyncio
import itertools
import os
import json

import websockets


_RUN = os.urandom(4).hex()
_REFS = itertools.count()

class Client:
    def __init__(self, ws):
        self.ws = ws
        self.worker = ws.response.headers.get("X-SecureChat-Worker")
        self.seen = []      # every frame read, in order
        self.pending = []   # frames read but not yet matched by wait_for

    @classmethod
    async def connect(cls, deployment, session, origin=True, expect_welcome=True):
        headers = {"Cookie": "__Host-sc_session=" + session.cookies["__Host-sc_session"]}
        if origin:
            headers["Origin"] = deployment.origin
        host = getattr(deployment, "host", "127.0.0.1")
        ws = await websockets.connect("wss://%s:%d/ws" % (host, deployment.port), ssl=deployment.ssl_context(),
                                      additional_headers=headers, max_size=2 ** 22, open_timeout=10)
        c = cls(ws)
        if expect_welcome:
            c.welcome = await c.next_frame()
            assert c.welcome["type"] == "welcome", c.welcome
        return c

    @classmethod
    async def connect_retrying(cls, deployment, session, seconds=20):
        """`connect`, polled until it works or `seconds` pass (a worker or Redis coming back)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            try:
                return await cls.connect(deployment, session)
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def send(self, obj):
        await self.ws.send(obj if isinstance(obj, str) else json.dumps(obj))

    async def next_frame(self, timeout=10):
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def wait_for(self, predicate, timeout=10):
        """The first frame, already read or still to come, that matches; others stay pending."""
        for i, f in enumerate(self.pending):
            if predicate(f):
                del self.pending[i]
                return f
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError("no matching frame within %ss; saw %r" % (timeout, self.seen[-10:]))
            try:
                f = await self.next_frame(remaining)
            except asyncio.TimeoutError:
                raise AssertionError("no matching frame within %ss; saw %r" % (timeout, self.seen[-10:]))
            self.seen.append(f)
            if predicate(f):
                return f
            self.pending.append(f)

    async def send_text(self, text, ref=None):
        """Sends a chat message and returns the ack or error for its ref."""
        # Unique per call: a ref the server saw from this user in the last 180 s is answered with
        # the first message's ack, not stored again (id(text) was reused by equal-length strings).
        ref = ref or "r-%s-%d" % (_RUN, next(_REFS))
        await self.send({"type": "send", "text": text, "ref": ref})
        return await self.wait_for(lambda f: f["type"] in ("ack", "error") and f.get("ref") == ref)

    async def closed_code(self, timeout=10):
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None

    async def close(self):
        await self.ws.close()


def run(coro):
    return asyncio.run(coro)


def id_key(message_id):
    ms, seq = message_id.split("-")
    return int(ms), int(seq)
