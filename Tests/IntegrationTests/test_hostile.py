"""Hostile input against a real deployment: malformed HTTP and WebSocket
traffic must get its 4xx, error or close code, never a crash, and the service
must stay healthy for everyone else."""
import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import struct
import time

import pytest
import requests

from conftest import wait_until
from wsclient import Client, run


class RawWebSocket:
    """A TLS WebSocket that can send what a well-behaved library never would."""

    def __init__(self, deployment, cookie):
        ctx = ssl.create_default_context(cafile=deployment.ca)
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", deployment.port), timeout=10),
                                    server_hostname="127.0.0.1")
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nCookie: __Host-sc_session=%s\r\n\r\n"
                           % (deployment.port, key, cookie)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = b""
        self.welcome = self.next_text()
        assert self.welcome["type"] == "welcome"

    def send_frame(self, opcode, payload, fin=True, mask=True, rsv=0):
        first = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        header = bytes([first])
        mask_bit = 0x80 if mask else 0
        if n < 126:
            header += bytes([mask_bit | n])
        elif n < 65536:
            header += bytes([mask_bit | 126]) + struct.pack("!H", n)
        else:
            header += bytes([mask_bit | 127]) + struct.pack("!Q", n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            header += key
        self.sock.sendall(header + payload)

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def next_frame(self):
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 & 0x0F, self._read(n)

    def next_text(self):
        while True:
            op, data = self.next_frame()
            if op == 1:
                return json.loads(data)
            if op == 8:
                raise AssertionError("closed with %r" % data)

    def close_code(self):
        """Reads until the server's close frame; returns its code (None if the socket just ends)."""
        try:
            while True:
                op, data = self.next_frame()
                if op == 8:
                    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
        except (ConnectionError, ssl.SSLError, socket.timeout, OSError):
            return None

    def send_json_text(self, text):
        self.send_frame(1, text.encode() if isinstance(text, str) else text)


@pytest.fixture
def deployment(shared_deployment):
    return shared_deployment


@pytest.fixture
def raw(deployment):
    cookie = deployment.login("alice").cookies["__Host-sc_session"]
    return lambda: RawWebSocket(deployment, cookie)


CLOSE_CASES = [
    ("unmasked client frame", lambda w: w.send_frame(1, b'{"type":"send","text":"x"}', mask=False), 1002),
    ("reserved opcode 0x3", lambda w: w.send_frame(3, b"x"), 1002),
    ("reserved control opcode 0xB", lambda w: w.send_frame(0xB, b"x"), 1002),
    ("ping over 125 bytes", lambda w: w.send_frame(9, b"p" * 126), 1002),
    ("RSV1 without an extension", lambda w: w.send_frame(1, b'{"type":"send","text":"x"}', rsv=4), 1002),
    ("invalid UTF-8 in a text frame", lambda w: w.send_frame(1, b'{"type":"send","text":"\xff\xfe"}'), 1007),
    ("continuation without a start", lambda w: w.send_frame(0, b"x"), 1002),
    ("fragments over 64 KiB in all", lambda w: [w.send_frame(1, b"[" + b" " * 40000, fin=False),
                                                w.send_frame(0, b" " * 40000, fin=True)], 1009),
    ("one frame over 64 KiB", lambda w: w.send_frame(1, b" " * (65 * 1024)), 1009),
    ("a new text frame inside a fragmented one", lambda w: [w.send_frame(1, b"[", fin=False), w.send_frame(1, b"]")], 1002),
]


@pytest.mark.parametrize("name,attack,code", CLOSE_CASES, ids=[c[0] for c in CLOSE_CASES])
def test_protocol_violations_close_with_their_code(deployment, raw, name, attack, code):
    w = raw()
    attack(w)
    assert w.close_code() == code, name
    # Everyone else is fine.
    assert requests.get(deployment.base + "/healthz", verify=deployment.ca).json()["status"] == "ok"
    other = raw()
    other.send_json_text('{"type":"send","text":"still fine","ref":"ok"}')
    assert other.next_text()["type"] in ("ack", "message", "presence")


ERROR_CASES = [
    ("deep nesting", "[" * 20000 + "]" * 20000, "bad_request"),
    ("deep object nesting", '{"a":' * 5000 + "1" + "}" * 5000, "bad_request"),
    ("huge number as ref", '{"type":"send","text":"x","ref":1e999}', "bad_request"),
    ("huge number as text", '{"type":"send","text":123456789012345678901234567890}', "bad_request"),
    ("text as an array", '{"type":"send","text":["a"]}', "bad_request"),
    ("type as an object", '{"type":{"send":1}}', "bad_request"),
    ("null type", '{"type":null}', "bad_request"),
    ("sync with a numeric since", '{"type":"sync","since":5}', "bad_request"),
    ("sync with a silly since", '{"type":"sync","since":"99999999999999999999999-1"}', "bad_request"),
    ("top-level string", '"send"', "bad_request"),
    ("empty frame", "", "bad_request"),
    ("NUL bytes", '{"type":"send","text":"a\\u0000b","ref":"nul"}', None),  # accepted: a NUL is just a character
    ("duplicate keys", '{"type":"send","text":"first","text":"second","ref":"dup"}', None),
]


@pytest.mark.parametrize("name,frame,code", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_frames_get_errors_and_the_connection_stays(deployment, raw, name, frame, code):
    w = raw()
    w.send_json_text(frame)
    reply = w.next_text()
    while reply["type"] in ("presence", "message"):
        reply = w.next_text()
    if code is None:
        assert reply["type"] == "ack", reply
    else:
        assert reply["type"] == "error" and reply["code"] == code, reply
    w.send_json_text('{"type":"send","text":"after %s","ref":"after"}' % name)
    reply = w.next_text()
    while reply["type"] in ("presence", "message"):
        reply = w.next_text()
    assert reply == {"type": "ack", "ref": "after", "id": reply["id"]}


def test_ping_flood_is_answered_and_harmless(deployment, raw):
    w = raw()
    for i in range(2000):
        w.send_frame(9, b"%d" % i)
    pongs = 0
    while pongs < 2000:
        op, _ = w.next_frame()
        if op == 10:
            pongs += 1
    w.send_json_text('{"type":"send","text":"after the flood","ref":"f"}')
    reply = w.next_text()
    while reply["type"] != "ack":
        reply = w.next_text()
    assert requests.get(deployment.base + "/healthz", verify=deployment.ca).status_code == 200


def test_fragmented_message_is_reassembled(deployment, raw):
    w = raw()
    body = b'{"type":"send","text":"in three pieces","ref":"frag"}'
    w.send_frame(1, body[:10], fin=False)
    w.send_frame(9, b"interleaved ping")       # control frames may come between fragments
    w.send_frame(0, body[10:30], fin=False)
    w.send_frame(0, body[30:], fin=True)
    reply = w.next_text()
    while reply["type"] != "ack":
        reply = w.next_text()
    assert reply["ref"] == "frag"


def raw_http(deployment, data):
    """Sends raw bytes; returns the first response (head and Content-Length body), or b"" if the server just closed."""
    ctx = ssl.create_default_context(cafile=deployment.ca)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", deployment.port), timeout=10), server_hostname="127.0.0.1")
    out = b""
    try:
        s.sendall(data)
        while b"\r\n\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
        head, _, body = out.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body
    except (ConnectionError, ssl.SSLError, socket.timeout, OSError):
        return out
    finally:
        s.close()


HTTP_CASES = [
    ("garbage request line", b"HELLO THERE\r\n\r\n"),
    ("missing version", b"GET /\r\n\r\n"),
    ("huge header", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"),
    ("header flood", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n"),
    ("huge URI", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("bad chunk size", b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n"),
    ("chunked body over the limit", b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n" + (b"4000\r\n" + b"a" * 0x4000 + b"\r\n") * 3 + b"0\r\n\r\n"),
    ("content-length and chunked", b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("NUL in the path", b"GET /static/\x00style.css HTTP/1.1\r\nHost: x\r\n\r\n"),
]


@pytest.mark.parametrize("name,data", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_malformed_http_gets_4xx_or_a_closed_connection(deployment, name, data):
    out = raw_http(deployment, data)
    if out:
        status = int(out.split(b" ", 2)[1])
        assert 400 <= status < 500, (name, out[:200])
        assert b"scrypt" not in out
    assert requests.get(deployment.base + "/healthz", verify=deployment.ca).status_code == 200


@pytest.mark.parametrize("path", ["/static/..%2f..%2fusers.json", "/static/%2e%2e%2fusers.json", "/static/..%252fusers.json",
                                  "/static/....//users.json", "/static/%c0%ae%c0%ae/users.json", "/static//etc/passwd",
                                  "/static/..\\users.json", "/..%2fusers.json", "/users.json", "/static/../../Package.swift",
                                  "/static/%2e%2e/%2e%2e/etc/passwd", "/static/.", "/static/.."])
def test_no_path_reaches_outside_the_assets(deployment, path):
    out = raw_http(deployment, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status = int(out.split(b" ", 2)[1])
    assert status in (400, 404), (path, out[:200])
    assert b"scrypt" not in out and b"root:" not in out and b"PackageDescription" not in out


def _coordinator_with_secret():
    import subprocess
    from conftest import BIN, free_port, wait_listening
    port = free_port()
    proc = subprocess.Popen([os.path.join(BIN, "securechat-coordinator"), "--coordinator", "127.0.0.1:%d" % port,
                             "--cluster-secret", "a-secret-for-this-test"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_listening(port, 20, what="coordinator listening")
    return proc, port


def _closed_by_peer(sock, deadline_s):
    """True once the peer closed the connection (reads EOF or a reset) within the deadline."""
    sock.settimeout(0.2)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True
    return False


def _frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def test_coordinator_links_prove_the_secret_small_and_soon():
    proc, port = _coordinator_with_secret()
    try:
        # Before hello: a frame that claims to be big, and bytes past the small bound: closed.
        big = socket.create_connection(("127.0.0.1", port))
        big.sendall(struct.pack(">I", 1 << 20) + b"x" * 8192)
        assert _closed_by_peer(big, 5)
        # Connected and silent: closed after the 5 s allowed for a hello.
        quiet = socket.create_connection(("127.0.0.1", port))
        assert _closed_by_peer(quiet, 15)
        # The secret never crosses: a challenge-response over both sides' nonces.
        def transcript(role, client_nonce, coordinator_nonce):
            out = ("securechat-coordinator v1 %s" % role).encode()
            for part in (client_nonce, coordinator_nonce):
                out += len(part).to_bytes(2, "big") + part
            return out

        def responses(sock, n):
            data = b""
            while data.count(b'"response"') < n:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
            out, rest = [], data
            while len(out) < n:
                size = struct.unpack(">I", rest[:4])[0]
                out.append(json.loads(rest[4:4 + size]))
                rest = rest[4 + size:]
            return out

        for secret, accepted in (("a-wrong-secret", False), ("a-secret-for-this-test", True)):
            link = socket.create_connection(("127.0.0.1", port), timeout=5)
            mine = os.urandom(16)
            link.sendall(_frame({"request": {"id": 1, "_1": {"authBegin": {"nonce": list(mine)}}}}))
            challenge = responses(link, 1)[0]["response"]["_1"]["authChallenge"]
            theirs, proof = bytes(challenge["nonce"]), bytes(challenge["proof"])
            # The coordinator proved it holds the secret (checked with the right one only).
            expected = hmac.new(b"a-secret-for-this-test", transcript("coordinator", mine, theirs), hashlib.sha256).digest()
            assert proof == expected
            ours = hmac.new(secret.encode(), transcript("client", mine, theirs), hashlib.sha256).digest()
            link.sendall(_frame({"request": {"id": 2, "_1": {"authFinish": {"proof": list(ours)}}}}))
            if not accepted:
                assert _closed_by_peer(link, 5)
                continue
            link.sendall(_frame({"request": {"id": 3, "_1": {"status": {}}}}))
            answers = responses(link, 2)
            assert "ok" in answers[0]["response"]["_1"] and "status" in answers[1]["response"]["_1"]
            link.close()
        # A replayed proof for another nonce pair is refused.
        replay = socket.create_connection(("127.0.0.1", port), timeout=5)
        replay.sendall(_frame({"request": {"id": 1, "_1": {"authFinish": {"proof": list(ours)}}}}))
        assert _closed_by_peer(replay, 5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
