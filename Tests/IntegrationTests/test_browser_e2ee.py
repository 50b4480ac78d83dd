"""End-to-end encryption in real browsers (Debian's chromium through chromedriver), against
the real processes: dms both ways, a private encrypted room of three with a member removed,
a second browser restoring history with the recovery key, a third without it, safety numbers
and the warning when a verified contact's keys change, and an encrypted image.

Each test ends by dumping everything the server holds (every Redis key and stream entry,
every stored file, Redis's files on disk, every process's log) and finding none of the texts
and file bytes sent encrypted, while a text sent in a plain room is found (the dump sees
what it should). Screenshots in test-artifacts/browser/."""
import base64
import os
import re
import secrets
import struct
import tempfile
import zlib

from selenium.webdriver.common.by import By

from conftest import wait_until
from test_browser import browsers, messages, send, shot, wait  # noqa: F401 (browsers is a fixture)
from test_browser_rooms import open_room, rooms_deployment, signed_in

DUMP = """
local out = {}
for _, k in ipairs(redis.call('KEYS', '*')) do
  out[#out + 1] = k
  local t = redis.call('TYPE', k)['ok']
  local v
  if t == 'string' then v = {redis.call('GET', k)}
  elseif t == 'hash' then v = redis.call('HGETALL', k)
  elseif t == 'list' then v = redis.call('LRANGE', k, 0, -1)
  elseif t == 'set' then v = redis.call('SMEMBERS', k)
  elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1)
  elseif t == 'stream' then
    v = {}
    for _, e in ipairs(redis.call('XRANGE', k, '-', '+')) do
      v[#v + 1] = e[1]
      for _, f in ipairs(e[2]) do v[#v + 1] = f end
    end
  else v = {} end
  for _, x in ipairs(v) do out[#out + 1] = x end
end
return out
"""


def server_holds(d):
    """Every byte the server holds, as one blob: Redis's keys and values (stored files
    decoded from their base64), Redis's files on disk, and every process's log."""
    import subprocess
    raw = subprocess.run(["redis-cli", "-s", os.path.join(d.state, "redis.sock"), "--raw", "EVAL", DUMP, "0"],
                         capture_output=True, check=True).stdout
    parts = [raw]
    for key in d.redis("KEYS", "sc:file:*").split():
        data = d.redis("HGET", key, "data")
        parts.append(base64.b64decode(data))
    for root, _, files in os.walk(d.state):
        for name in files:
            if name.endswith(".sock"):
                continue
            try:
                with open(os.path.join(root, name), "rb") as f:
                    parts.append(f.read())
            except OSError:
                pass
    parts.append(d.log_text().encode())
    return b"\n".join(parts)


def assert_server_never_saw(d, secret_texts, plain_control, secret_bytes=()):
    wait_until(lambda: plain_control.encode() in server_holds(d), 10, what="the plain control text in the dump")
    blob = server_holds(d)
    found = [t for t in secret_texts if t.encode() in blob] + ["%d bytes of a file" % len(b) for b in secret_bytes if b in blob]
    assert found == [], "plaintext of an encrypted room on the server: %r" % found


def signed_in_new(b, d, name):
    """Signs in a user whose keys are made in this browser: returns the recovery key it shows once."""
    signed_in(b, d, name)
    wait(b, lambda x: x.find_element(By.ID, "recovery-reminder").is_displayed(), timeout=20)
    b.find_element(By.ID, "recovery-reminder").click()
    wait(b, lambda x: x.find_element(By.ID, "recovery-dialog").get_attribute("open") is not None)
    key = b.find_element(By.ID, "recovery-key").text
    assert re.fullmatch(r"([0-9A-HJKMNP-TV-Z]{4}-){7}[0-9A-HJKMNP-TV-Z]{4}", key), key
    b.find_element(By.ID, "recovery-done").click()
    wait(b, lambda x: not x.find_element(By.ID, "recovery-reminder").is_displayed())
    wait(b, keys_ready)
    return key


def keys_ready(b):
    return b.execute_script("return !!(window.SecureChatPage && SecureChatPage.keys.state === 'ready')")


def restore_dialog(b):
    return b.find_element(By.ID, "restore-dialog").get_attribute("open") is not None


def secret(label):
    return "%s-%s" % (label, secrets.token_hex(6))


def create_encrypted_room(b, name, invite):
    b.find_element(By.ID, "new-room").click()
    b.find_element(By.ID, "create-name").send_keys(name)
    b.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="private"]').click()
    b.find_element(By.ID, "create-encrypted").click()
    b.find_element(By.ID, "create-submit").click()
    wait(b, lambda x: x.find_element(By.ID, "room-title").text == "#" + name)
    for n in invite:
        b.find_element(By.ID, "invite").click()
        box = b.find_element(By.ID, "invite-user")
        box.clear()
        box.send_keys(n)
        b.find_element(By.ID, "invite-submit").click()
        wait(b, lambda x: n in x.find_element(By.ID, "members").text)
    return name


def read(b, text, timeout=15):
    wait(b, lambda x: text in messages(x), timeout=timeout)


def e2ee_states(b):
    return b.execute_script(
        "return Array.from(document.querySelectorAll('#messages li.message')).map(function (li) { return li.dataset.e2ee || ''; })")


def test_dm_both_ways_safety_numbers_and_a_key_change(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob = browsers(), browsers()
    signed_in_new(alice, d, "alice")
    signed_in_new(bob, d, "bob")
    control = secret("plain-lobby")
    send(alice, control)
    read(bob, control)
    # alice opens a dm from the people list.
    wait(alice, lambda x: x.find_elements(By.CSS_SELECTOR, '#online button[data-user="bob"]'))
    alice.find_element(By.CSS_SELECTOR, '#online button[data-user="bob"]').click()
    wait(alice, lambda x: x.find_element(By.ID, "room-title").text == "@bob")
    to_bob, to_alice = secret("dm-to-bob"), secret("dm-to-alice")
    send(alice, to_bob)
    read(alice, to_bob)
    wait(bob, lambda x: x.find_elements(By.CSS_SELECTOR, '#sidebar button[data-room="dm:alice:bob"]'))
    open_room(bob, "dm:alice:bob")
    read(bob, to_bob)
    send(bob, to_alice)
    read(alice, to_alice)
    assert e2ee_states(alice) == ["ok", "ok"] and e2ee_states(bob) == ["ok", "ok"]

    # The same safety number on both sides: 60 digits in groups of five.
    numbers = []
    for b in (alice, bob):
        b.find_element(By.ID, "verify").click()
        wait(b, lambda x: re.fullmatch(r"(\d{5} ){11}\d{5}", x.find_element(By.ID, "safety-number").text), timeout=20)
        numbers.append(b.find_element(By.ID, "safety-number").text)
    assert numbers[0] == numbers[1], numbers
    alice.find_element(By.ID, "safety-verify").click()
    wait(alice, lambda x: x.find_element(By.ID, "verified-mark").is_displayed())
    bob.find_element(By.CSS_SELECTOR, "#safety-dialog [data-close]").click()
    shot(alice, "e2ee-dm-verified")

    # bob makes new keys in a fresh browser: alice, who verified him, gets a warning she cannot miss.
    bob_new = browsers()
    signed_in(bob_new, d, "bob")
    wait(bob_new, restore_dialog, timeout=20)
    bob_new.find_element(By.ID, "restore-reset").click()
    bob_new.switch_to.alert.accept()
    wait(bob_new, lambda x: x.find_element(By.ID, "recovery-dialog").get_attribute("open") is not None, timeout=20)
    bob_new.find_element(By.ID, "recovery-done").click()
    wait(alice, lambda x: x.find_element(By.ID, "key-warning").is_displayed(), timeout=20)
    assert "bob" in alice.find_element(By.ID, "key-warning-text").text
    assert not alice.find_element(By.ID, "verified-mark").is_displayed()
    # What alice sends now does not reach bob's new keys until she compares numbers again.
    held = secret("held-back")
    send(alice, held)
    read(alice, held)
    open_room(bob_new, "dm:alice:bob")
    wait(bob_new, lambda x: len(e2ee_states(x)) == 3)
    assert held not in messages(bob_new) and e2ee_states(bob_new) == ["no_key"] * 3
    alice.find_element(By.ID, "key-warning-check").click()
    wait(alice, lambda x: re.fullmatch(r"(\d{5} ){11}\d{5}", x.find_element(By.ID, "safety-number").text), timeout=20)
    assert alice.find_element(By.ID, "safety-number").text != numbers[0]
    shot(alice, "e2ee-key-change-warning")
    assert_server_never_saw(d, [to_bob, to_alice, held], control)


def test_private_room_of_three_and_a_removed_member_cannot_read_what_follows(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob, carol = browsers(), browsers(), browsers()
    for b, n in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        signed_in_new(b, d, n)
    room = create_encrypted_room(alice, "vault", ["bob", "carol"])
    for b in (bob, carol):
        wait(b, lambda x: x.find_elements(By.CSS_SELECTOR, '#sidebar button[data-room="%s"]' % room))
        open_room(b, room)
    texts = {n: secret("room-from-" + n) for n in ("alice", "bob", "carol")}
    for b, n in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        send(b, texts[n])
        read(b, texts[n])
    for b in (alice, bob, carol):
        for t in texts.values():
            read(b, t)
    before = d.redis("XREVRANGE", "sc:room:%s:stream" % room, "+", "-", "COUNT", "1").split("\n")

    # alice removes carol; the next message is on a new chain carol was never given.
    alice.find_element(By.CSS_SELECTOR, '#members button[data-remove="carol"]').click()
    alice.switch_to.alert.accept()
    wait(alice, lambda x: "carol" not in x.find_element(By.ID, "members").text)
    after = secret("after-removal")
    send(alice, after)
    read(bob, after)
    last = d.redis("XREVRANGE", "sc:room:%s:stream" % room, "+", "-", "COUNT", "1").split("\n")

    def envelope(entry):
        body = entry[entry.index("b") + 1]
        import json
        return entry[0], json.loads("{" + body + "}")["e2ee"]

    old_id, old_env = envelope(before)
    new_id, new_env = envelope(last)
    assert old_env["sid"] != new_env["sid"]
    attempt = """
      var done = arguments[arguments.length - 1];
      SecureChatPage.keys.decrypt(arguments[0], arguments[1], arguments[2], arguments[3])
        .then(function (c) { done({ok: true, text: c.text}); }, function (e) { done({ok: false, code: e.code}); });"""
    # carol's own keys still open what she was sent before the removal, not what came after.
    assert carol.execute_async_script(attempt, room, "carol", old_id, old_env) == {"ok": True, "text": texts["carol"]}
    assert carol.execute_async_script(attempt, room, "alice", new_id, new_env) == {"ok": False, "code": "no_key"}
    assert after not in messages(carol)
    # A forged envelope (a flipped ciphertext byte) is refused, not shown.
    forged = dict(new_env, ct=("B" if new_env["ct"][0] == "A" else "A") + new_env["ct"][1:])
    assert bob.execute_async_script(attempt, room, "alice", new_id + "x", forged)["ok"] is False
    shot(bob, "e2ee-room-after-removal")
    control = secret("plain-lobby")
    open_room(alice, "lobby")
    send(alice, control)
    assert_server_never_saw(d, list(texts.values()) + [after], control)


def test_a_second_browser_restores_history_with_the_recovery_key_and_a_third_without_it_says_so(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob = browsers(), browsers()
    signed_in_new(alice, d, "alice")
    recovery = signed_in_new(bob, d, "bob")
    room = create_encrypted_room(alice, "history", ["bob"])
    wait(bob, lambda x: x.find_elements(By.CSS_SELECTOR, '#sidebar button[data-room="%s"]' % room))
    open_room(bob, room)
    h1, h2 = secret("history-alice"), secret("history-bob")
    send(alice, h1)
    read(bob, h1)
    send(bob, h2)
    read(alice, h2)

    # A new browser of bob's: the recovery key opens the backup, and with it the history.
    wait(bob, lambda x: x.execute_script("return SecureChatPage.keys.backup === 'saved'"))
    bob2 = browsers()
    signed_in(bob2, d, "bob")
    wait(bob2, restore_dialog, timeout=20)
    bob2.find_element(By.ID, "restore-key").send_keys(recovery.lower().replace("-", " "))
    bob2.find_element(By.ID, "restore-submit").click()
    wait(bob2, keys_ready, timeout=20)
    open_room(bob2, room)
    read(bob2, h1)
    read(bob2, h2)
    # and what alice sends next reaches both of bob's browsers (shared with the new device).
    n1 = secret("after-second-device")
    send(alice, n1)
    read(bob2, n1)
    read(bob, n1)
    shot(bob2, "e2ee-restored-history")

    # A third browser without the key: it says what it cannot read and makes no new identity.
    devices_before = d.redis("HKEYS", "sc:user:bob:devices").split()
    assert len(devices_before) == 2
    bob3 = browsers()
    signed_in(bob3, d, "bob")
    wait(bob3, restore_dialog, timeout=20)
    bob3.find_element(By.ID, "restore-later").click()
    open_room(bob3, room)
    wait(bob3, lambda x: len(e2ee_states(x)) == 3)
    assert e2ee_states(bob3) == ["no_keys"] * 3
    assert "enter your recovery key" in bob3.find_element(By.ID, "messages").text
    assert bob3.find_element(By.ID, "message-input").get_attribute("disabled") == "true"
    assert sorted(d.redis("HKEYS", "sc:user:bob:devices").split()) == sorted(devices_before)
    shot(bob3, "e2ee-no-recovery-key")
    control = secret("plain-lobby")
    open_room(alice, "lobby")
    send(alice, control)
    assert_server_never_saw(d, [h1, h2, n1], control)


def png(width, height, rgb):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def attach(b, path):
    box = b.find_element(By.ID, "file-input")
    b.execute_script("arguments[0].hidden = false;", box)
    box.send_keys(path)


def test_an_encrypted_image_is_previewed_and_a_plain_file_is_stored_as_it_is(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob = browsers(), browsers()
    signed_in_new(alice, d, "alice")
    signed_in_new(bob, d, "bob")
    room = create_encrypted_room(alice, "pictures", ["bob"])
    wait(bob, lambda x: x.find_elements(By.CSS_SELECTOR, '#sidebar button[data-room="%s"]' % room))
    open_room(bob, room)
    colour = (200, 30, 90 + secrets.randbelow(100))
    image = png(24, 16, colour)
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as f:
        f.write(image)
        path = f.name
    try:
        attach(alice, path)
        wait(bob, lambda x: x.execute_script(
            "var i = document.querySelector('#messages img.preview'); return !!(i && i.complete && i.naturalWidth === 24);"), timeout=20)
        # The picture decrypted is the one sent: its pixels, read back through a canvas.
        pixel = bob.execute_script("""
          var i = document.querySelector('#messages img.preview'), c = document.createElement('canvas');
          c.width = i.naturalWidth; c.height = i.naturalHeight;
          var g = c.getContext('2d'); g.drawImage(i, 0, 0);
          return Array.from(g.getImageData(5, 5, 1, 1).data.slice(0, 3));""")
        assert pixel == list(colour)
        files = d.redis("KEYS", "sc:file:*").split()
        assert len(files) == 1
        stored = base64.b64decode(d.redis("HGET", files[0], "data"))
        assert len(stored) == len(image) + 16 and image not in stored   # ciphertext and its GCM tag
        shot(bob, "e2ee-image")
        # In a plain room the same file is stored as it is, and also previewed.
        plain = png(8, 8, (1, 2, 3))
        with open(path, "wb") as f:
            f.write(plain)
        open_room(alice, "lobby")
        attach(alice, path)
        wait(bob, lambda x: x.find_elements(By.CSS_SELECTOR, '#sidebar button[data-room="lobby"]'))
        open_room(bob, "lobby")
        wait(bob, lambda x: x.execute_script(
            "var i = document.querySelector('#messages img.preview'); return !!(i && i.complete && i.naturalWidth === 8);"), timeout=20)
    finally:
        os.unlink(path)
    control = secret("plain-lobby")
    send(alice, control)
    assert plain in server_holds(d)
    assert_server_never_saw(d, [], control, secret_bytes=[image])


def stream_entries(d, room):
    """(id, from, kind, body) of every entry of the room's stream."""
    import subprocess
    out = subprocess.run(["redis-cli", "-s", os.path.join(d.state, "redis.sock"), "--json", "XRANGE", "sc:room:%s:stream" % room, "-", "+"],
                         capture_output=True, text=True, check=True).stdout
    import json
    entries = []
    for entry_id, fields in json.loads(out):
        f = dict(zip(fields[::2], fields[1::2]))
        entries.append((entry_id, f["from"], f["k"], f["b"]))
    return entries


def test_two_tabs_of_one_browser_never_send_on_the_same_message_key(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob = browsers(), browsers()
    signed_in_new(alice, d, "alice")
    signed_in_new(bob, d, "bob")
    room = create_encrypted_room(alice, "tabs", ["bob"])
    first = alice.current_window_handle
    alice.switch_to.new_window("tab")
    second = alice.current_window_handle
    alice.get(d.base + "/chat")
    wait(alice, keys_ready, timeout=20)
    open_room(alice, room)
    sent = []
    for k in range(6):
        alice.switch_to.window(first if k % 2 == 0 else second)
        sent.append(secret("tab%d" % k))
        # Both tabs encrypt at once: one in flight while the other starts.
        alice.execute_script("""
          document.getElementById('message-input').value = arguments[0];
          document.getElementById('send-form').requestSubmit();""", sent[-1])
    wait(bob, lambda x: x.find_elements(By.CSS_SELECTOR, '#sidebar button[data-room="%s"]' % room))
    open_room(bob, room)
    for t in sent:
        read(bob, t)
    import json
    pairs = [(e["sid"], e["i"]) for e in (json.loads("{" + b + "}")["e2ee"] for _, _, k, b in stream_entries(d, room) if k == "text")]
    assert len(pairs) == 6 and len(set(pairs)) == 6, pairs
    control = secret("plain-lobby")
    open_room(bob, "lobby")
    send(bob, control)
    assert_server_never_saw(d, sent, control)


def test_a_server_that_replays_or_injects_messages_is_caught(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob = browsers(), browsers()
    signed_in_new(alice, d, "alice")
    signed_in_new(bob, d, "bob")
    room = create_encrypted_room(alice, "watched", ["bob"])
    wait(bob, lambda x: x.find_elements(By.CSS_SELECTOR, '#sidebar button[data-room="%s"]' % room))
    open_room(bob, room)
    s1 = secret("original")
    send(alice, s1)
    read(bob, s1)
    # The server (here: whoever writes to its Redis) replays alice's envelope as a new
    # message, and slips a plain text into the encrypted room under her name.
    (_, sender, kind, body), = [e for e in stream_entries(d, room) if e[2] == "text"]
    stream = "sc:room:%s:stream" % room
    d.redis("XADD", stream, "*", "from", sender, "k", kind, "b", body)
    d.redis("XADD", stream, "*", "from", "alice", "k", "text", "b", '"text":"injected by the server"')
    bob.refresh()
    wait(bob, keys_ready, timeout=20)
    open_room(bob, room)
    wait(bob, lambda x: e2ee_states(x) == ["ok", "bad", "unencrypted"], timeout=20)
    shown = messages(bob)
    assert shown.count(s1) == 1 and "injected by the server" not in shown, shown


def test_a_lost_device_removed_from_another_browser_reads_nothing_sent_after(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob = browsers(), browsers()
    signed_in_new(alice, d, "alice")
    recovery = signed_in_new(bob, d, "bob")
    room = create_encrypted_room(alice, "lost", ["bob"])
    wait(bob, lambda x: x.execute_script("return SecureChatPage.keys.backup === 'saved'"))
    lost = browsers()
    signed_in(lost, d, "bob")
    wait(lost, restore_dialog, timeout=20)
    lost.find_element(By.ID, "restore-key").send_keys(recovery)
    lost.find_element(By.ID, "restore-submit").click()
    wait(lost, keys_ready, timeout=20)
    open_room(lost, room)
    m1 = secret("before-removal")
    send(alice, m1)
    read(lost, m1)
    # From bob's first browser: Devices, remove the other one.
    bob.find_element(By.ID, "devices-button").click()
    wait(bob, lambda x: len(x.find_elements(By.CSS_SELECTOR, "#devices-list button[data-device]")) == 1)
    bob.find_element(By.CSS_SELECTOR, "#devices-list button[data-device]").click()
    bob.switch_to.alert.accept()
    wait(bob, lambda x: not x.find_elements(By.CSS_SELECTOR, "#devices-list button[data-device]"))
    shot(bob, "e2ee-devices")
    bob.find_element(By.CSS_SELECTOR, "#devices-dialog [data-close]").click()
    # The removed browser says so, and reads nothing sent after.
    wait(lost, restore_dialog, timeout=20)
    assert "removed" in lost.find_element(By.ID, "restore-why").text
    m2 = secret("after-removal")
    send(alice, m2)
    open_room(bob, room)
    read(bob, m2)
    import json
    entries = [e for e in stream_entries(d, room) if e[2] == "text"]
    (_, _, _, b1), (id2, _, _, b2) = entries[-2], entries[-1]
    env1, env2 = json.loads("{" + b1 + "}")["e2ee"], json.loads("{" + b2 + "}")["e2ee"]
    assert env1["sid"] != env2["sid"], "the chain did not rotate when the device was removed"
    attempt = """
      var done = arguments[arguments.length - 1];
      SecureChatPage.keys.decrypt(arguments[0], 'alice', arguments[1], arguments[2])
        .then(function (c) { done({ok: true}); }, function (e) { done({ok: false, code: e.code}); });"""
    assert lost.execute_async_script(attempt, room, id2, env2) == {"ok": False, "code": "no_key"}
    assert m2 not in messages(lost)
    control = secret("plain-lobby")
    open_room(alice, "lobby")
    send(alice, control)
    assert_server_never_saw(d, [m1, m2], control)
