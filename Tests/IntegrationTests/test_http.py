"""Pages, assets, headers and health of the gateway."""
import requests

SECURITY_HEADERS = ["Content-Security-Policy", "X-Content-Type-Options", "Strict-Transport-Security",
                    "Referrer-Policy", "X-Frame-Options"]


def get(deployment, path, session=None, **kw):
    return (session or requests).get(deployment.base + path, verify=deployment.ca, allow_redirects=False, **kw)


def test_pages_redirect_by_session(deployment):
    r = get(deployment, "/")
    assert r.status_code == 200 and "text/html" in r.headers["Content-Type"] and "login-form" in r.text
    assert get(deployment, "/chat").status_code == 302 and get(deployment, "/chat").headers["Location"] == "/"
    s = deployment.login("admin")
    assert get(deployment, "/", s).status_code == 302 and get(deployment, "/", s).headers["Location"] == "/chat"
    assert get(deployment, "/chat", s).status_code == 200
    cookie = s.cookies["__Host-sc_session"]
    assert len(cookie) >= 22


def test_login_cookie_flags_and_fresh_ids(deployment):
    url = deployment.base + "/api/login"
    body = {"username": "admin", "password": "password123"}
    r1 = requests.post(url, json=body, verify=deployment.ca)
    r2 = requests.post(url, json=body, verify=deployment.ca, cookies={"__Host-sc_session": r1.cookies["__Host-sc_session"]})
    assert r1.json() == {"ok": True, "username": "admin"}
    header = r1.headers["Set-Cookie"]
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"]:
        assert flag in header
    assert r1.cookies["__Host-sc_session"] != r2.cookies["__Host-sc_session"]
    # The session the browser brought along is ended, never adopted.
    assert get(deployment, "/api/me", cookies={"__Host-sc_session": r1.cookies["__Host-sc_session"]}).status_code == 401


def test_static_assets_and_no_escape(deployment):
    r = get(deployment, "/static/chat.js")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/javascript")
    assert get(deployment, "/static/style.css").headers["Content-Type"].startswith("text/css")
    for path in ["/static/..%2f..%2fusers.json", "/static/../users.json", "/static/%2e%2e/users.json",
                 "/static/nothing.js", "/static/", "/static/..%5cusers.json"]:
        r = get(deployment, path)
        assert r.status_code == 404, path
        assert "scrypt" not in r.text


def test_security_headers_everywhere(deployment):
    for path in ["/", "/static/login.js", "/api/me", "/healthz", "/nope"]:
        r = get(deployment, path)
        for h in SECURITY_HEADERS:
            assert h in r.headers, (path, h)
        assert "'unsafe-inline'" not in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_health_and_bounded_bodies(deployment):
    r = get(deployment, "/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["workers"] == 2
    big = requests.post(deployment.base + "/api/login", data="x" * (64 * 1024),
                        headers={"Content-Type": "application/json"}, verify=deployment.ca)
    assert big.status_code == 413
    assert requests.post(deployment.base + "/api/login", json={"username": "a" * 100, "password": "x"},
                         verify=deployment.ca).status_code == 400


def test_head_answers_have_the_headers_of_get_and_no_body(deployment):
    import socket
    d = deployment
    size = len(get(d, "/static/chat.js").content)
    # A HEAD and then a GET on one connection: if the HEAD answer carried a body, its bytes
    # would sit between the two answers (and a client would read them as the next answer).
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    tls = d.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(b"HEAD /static/chat.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                b"GET /static/favicon.svg HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    data = b""
    while b"</svg>" not in data:  # the end of the second answer
        chunk = tls.recv(65536)
        assert chunk, data[:300]
        data += chunk
    tls.close()
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: %d" % size in head.lower()
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]
    for path in ["/", "/nope", "/api/me"]:
        r = requests.head(d.base + path, verify=d.ca, allow_redirects=False)
        assert r.content == b""


def test_upgrade_names_no_worker_unless_asked(make_deployment, deployment):
    from wsclient import Client, run

    async def worker_of(d):
        c = await Client.connect(d, d.login("alice"))
        await c.close()
        return c.worker
    assert run(worker_of(deployment)) in ("worker-1", "worker-2")   # tests ask for it
    plain = make_deployment(worker_header=False)
    assert run(worker_of(plain)) is None


def test_the_session_cookie_is_host_prefixed_and_one_only(deployment):
    r = requests.post(deployment.base + "/api/login", json={"username": "alice", "password": "pw-alice-123456"},
                      verify=deployment.ca)
    assert r.headers["Set-Cookie"].startswith("__Host-sc_session=")
    assert "Domain" not in r.headers["Set-Cookie"] and "Path=/;" in r.headers["Set-Cookie"]
    sid = r.cookies["__Host-sc_session"]
    one = {"Cookie": "__Host-sc_session=" + sid}
    assert requests.get(deployment.base + "/api/me", headers=one, verify=deployment.ca).status_code == 200
    # The same cookie twice (or a planted second one) is no session at all.
    for two in ("__Host-sc_session=%s; __Host-sc_session=%s" % (sid, sid), "__Host-sc_session=%s; __Host-sc_session=x" % sid):
        assert requests.get(deployment.base + "/api/me", headers={"Cookie": two}, verify=deployment.ca).status_code == 401
    # The contract's plain name is not read.
    assert requests.get(deployment.base + "/api/me", headers={"Cookie": "sc_session=" + sid}, verify=deployment.ca).status_code == 401
