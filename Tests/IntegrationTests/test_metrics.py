"""Every process serves Prometheus metrics on its own private port, and they move with traffic."""
import json
import os
import re

import requests

from conftest import wait_until
from wsclient import Client, run

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def scrape(url):
    r = requests.get(url, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for line in r.text.splitlines():
        m = LINE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def total(samples, name, **labels):
    """The sum of `name` over series whose labels include `labels`."""
    s = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all('%s="%s"' % kv in rest for kv in labels.items()):
            s += value
    return s


def test_every_process_serves_metrics_that_follow_the_traffic(make_deployment):
    d = make_deployment()
    urls = json.load(open(os.path.join(d.state, "metrics.json")))
    assert set(urls) == {"coordinator", "worker-1", "worker-2", "gateway"}
    assert all(u.startswith("http://127.0.0.1:") for u in urls.values())
    before = {name: scrape(u) for name, u in urls.items()}
    for samples in before.values():
        assert total(samples, "securechat_process_resident_bytes") > 1 << 20

    alice, bob = d.login("alice"), d.login("bob")
    assert requests.post(d.base + "/api/login", json={"username": "alice", "password": "wrong"}, verify=d.ca).status_code == 401

    async def chat():
        a = await Client.connect(d, alice)
        b = await Client.connect(d, bob)
        for i in range(3):
            await a.send_text("counted %d" % i, ref="counted-%d" % i)
        for _ in range(3):
            await b.wait_for(lambda f: f["type"] == "message")
        # Both streams are open now: the gauges say so.
        g = scrape(urls["gateway"])
        assert total(g, "securechat_client_streams_open") == 2
        assert sum(total(scrape(urls[w]), "securechat_worker_streams_open") for w in ("worker-1", "worker-2")) == 2
        wait_until(lambda: total(scrape(urls["coordinator"]), "securechat_users_online") == 2, 5, what="users online")
        await a.close()
        await b.close()
    run(chat())

    after = {name: scrape(u) for name, u in urls.items()}

    def grew(proc, name, by=1, **labels):
        return total(after[proc], name, **labels) - total(before[proc], name, **labels) >= by

    assert grew("gateway", "securechat_logins_total", 2, outcome="ok")
    assert grew("gateway", "securechat_logins_total", 1, outcome="invalid")
    assert grew("gateway", "securechat_tls_handshakes_total", 3, result="ok")
    assert grew("gateway", "securechat_deliveries_total", 6)            # 3 messages to 2 clients, at least
    assert grew("gateway", "securechat_delivered_bytes_total", 300)
    assert grew("gateway", "securechat_worker_links_opened_total", 1)
    assert grew("gateway", "securechat_redis_rtt_seconds_count", 3)
    stored = sum(total(after[w], "securechat_messages_total") - total(before[w], "securechat_messages_total")
                 for w in ("worker-1", "worker-2"))
    assert stored == 3
    assert sum(total(after[w], "securechat_worker_deliveries_total") - total(before[w], "securechat_worker_deliveries_total")
               for w in ("worker-1", "worker-2")) >= 6
    assert any(grew(w, "securechat_coordinator_rtt_seconds_count", 3) for w in ("worker-1", "worker-2"))
    assert grew("coordinator", "securechat_rate_checks_total", 3, kind="message", result="allowed")
    assert total(after["coordinator"], "securechat_workers_live") == 2
    # Streams closed: the gauges fall back.
    wait_until(lambda: total(scrape(urls["gateway"]), "securechat_client_streams_open") == 0, 5, what="streams closed")

    # Nothing of it on the public port.
    r = requests.get(d.base + "/metrics", verify=d.ca)
    assert r.status_code == 404 and "securechat_" not in r.text


def test_password_checks_of_clients_that_left_are_skipped(make_deployment):
    import socket
    import ssl
    d = make_deployment(extra_args=["--max-logins-in-flight", "16", "--login-user-per-minute", "10000",
                                    "--login-address-per-minute", "10000", "--login-name-per-minute", "10000"])
    url = json.load(open(os.path.join(d.state, "metrics.json")))["gateway"]
    # 16 logins sent at once whose clients hang up at once: the thread pool (one thread per
    # core) can start two or so before the others' connections are seen closed.
    body = json.dumps({"username": "alice", "password": "wrong"}).encode()
    request = (b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    ctx = ssl.create_default_context(cafile=d.ca)
    socks = []
    for _ in range(16):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", d.port), timeout=10), server_hostname="127.0.0.1")
        socks.append(s)
    for s in socks:
        s.sendall(request)
    for s in socks:
        s.close()

    def counted():
        m = scrape(url)
        return total(m, "securechat_logins_total", outcome="abandoned") + total(m, "securechat_logins_total", outcome="invalid")
    wait_until(lambda: counted() == 16, 30, what="every login accounted for")
    m = scrape(url)
    assert total(m, "securechat_logins_total", outcome="abandoned") >= 1   # skipped, not checked
    assert total(m, "securechat_password_checks_in_flight") == 0
    # Nothing was spent for the skipped ones, and the gateway answers as before.
    assert requests.post(d.base + "/api/login", json={"username": "alice", "password": "pw-alice-123456"},
                         verify=d.ca).status_code == 200
