"""Files (protocol.md, "Files") against a real deployment: upload, download, the room
membership rule, sizes, the quota, content types, and binary bytes that round-trip."""
import os

import requests

from test_rooms import FAST, call, rooms_deployment  # noqa: F401
from wsclient import Client, run


def upload(d, session, room, data, content_type="application/octet-stream"):
    return session.post(d.base + "/api/files?room=" + room, data=data, verify=d.ca,
                        headers={"Content-Type": content_type, "Origin": d.origin})


def test_files_are_served_only_to_members_of_their_room(make_deployment):
    d = rooms_deployment(make_deployment)
    alice, bob, carol = d.login("alice"), d.login("bob"), d.login("carol")
    blob = bytes(range(256)) * 4096 + os.urandom(1000)          # every byte value, ~1 MiB
    r = upload(d, alice, "lobby", blob)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["ok"] is True and body["size"] == len(blob) and len(body["id"]) == 32
    got = bob.get(d.base + "/api/files/" + body["id"], verify=d.ca)
    assert got.status_code == 200 and got.content == blob
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["Content-Disposition"] == "attachment"
    assert got.headers["Cache-Control"] == "no-store"
    assert requests.get(d.base + "/api/files/" + body["id"], verify=d.ca).status_code == 401
    assert requests.post(d.base + "/api/files?room=lobby", data=b"x", verify=d.ca,
                         headers={"Content-Type": "application/octet-stream"}).status_code == 401

    async def make_private():
        a = await Client.connect(d, alice)
        await call(a, {"type": "create_room", "name": "vault", "kind": "private"}, "room_added")
        await call(a, {"type": "invite", "room": "vault", "user": "bob"}, "ok")
        await a.close()

    run(make_private())
    secret = upload(d, alice, "vault", b"private bytes")
    assert secret.status_code == 201
    fid = secret.json()["id"]
    assert bob.get(d.base + "/api/files/" + fid, verify=d.ca).content == b"private bytes"
    # A non-member cannot tell the file (or the room) from a missing one.
    assert carol.get(d.base + "/api/files/" + fid, verify=d.ca).status_code == 404
    assert carol.get(d.base + "/api/files/" + "0" * 32, verify=d.ca).status_code == 404
    assert carol.get(d.base + "/api/files/../../etc/passwd", verify=d.ca).status_code == 404
    assert upload(d, carol, "vault", b"x").status_code == 404
    assert upload(d, carol, "no-such-room", b"x").status_code == 404
    assert upload(d, alice, "lobby", b"x", content_type="text/plain").status_code == 415
    assert upload(d, alice, "bad room!", b"x").status_code == 400
    # Refused on the head alone, before any of the body is kept: no cookie, no length.
    assert requests.post(d.base + "/api/files?room=lobby", data=b"x" * 100000, verify=d.ca,
                         headers={"Content-Type": "application/octet-stream"}).status_code == 401
    chunked = alice.post(d.base + "/api/files?room=lobby", data=iter([b"a" * 1000, b"b" * 1000]), verify=d.ca,
                         headers={"Content-Type": "application/octet-stream", "Origin": d.origin})
    assert chunked.status_code == 411


def test_file_size_limit_and_quota(make_deployment):
    d = make_deployment(extra_args=FAST + ["--max-file-bytes", "2000", "--files-quota-bytes", "4000"])
    alice = d.login("alice")
    assert upload(d, alice, "lobby", b"a" * 2001).status_code == 413
    assert upload(d, alice, "lobby", b"a" * 2000).status_code == 201
    # Stored as base64 (4/3): 2,667 of the 4,000 bytes are taken; the next one does not fit.
    r = upload(d, alice, "lobby", b"b" * 2000)
    assert r.status_code == 507 and r.json()["error"] == "quota"
    assert upload(d, alice, "lobby", b"c" * 900).status_code == 201
