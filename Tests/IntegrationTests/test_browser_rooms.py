"""Rooms, direct messages and the message lifecycle in a real browser (Debian's chromium
through chromedriver): two users, one with two browsers. Screenshots in test-artifacts/browser/."""
import asyncio

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.action_chains import ActionChains

from conftest import wait_until
from test_browser import WATCH_STATES, browsers, connected, login, messages, send, shot, wait  # noqa: F401 (browsers is a fixture)
from wsclient import Client, run

FAST = ["--msg-burst", "1000", "--msg-per-second", "1000", "--sync-burst", "1000", "--sync-per-second", "1000"]


def rooms_deployment(make_deployment):
    d = make_deployment(extra_args=FAST)
    wait_until(lambda: int(d.redis("SCARD", "sc:users") or 0) >= 6, 10, what="accounts synced to redis")
    return d


def signed_in(b, d, name):
    login(b, d, name)
    wait(b, lambda x: x.current_url == d.base + "/chat")
    wait(b, connected)


def sidebar(b):
    """Room id -> the badge's text ('' without one)."""
    # Read in one script: the sidebar is redrawn as events arrive.
    return b.execute_script("""
      var out = {};
      document.querySelectorAll('#sidebar button[data-room]').forEach(function (b) {
        var badge = b.querySelector('.badge');
        out[b.dataset.room] = badge ? badge.textContent : '';
      });
      return out;""")


def open_room(b, room):
    # Found and clicked in one script: the sidebar is redrawn as events arrive.
    wait(b, lambda x: x.execute_script(
        "var b = document.querySelector(arguments[0]); if (b) b.click(); return !!b;", '#sidebar button[data-room="%s"]' % room))
    wait(b, lambda x: x.execute_script(
        "var b = document.querySelector('#sidebar li.current button'); return b ? b.dataset.room : null;") == room)


def row(b, text):
    """The message row whose text holds `text` (found in one script: rows are redrawn as events arrive)."""
    return b.execute_script("""
      var rows = document.querySelectorAll('#messages li.message');
      for (var i = 0; i < rows.length; i++) {
        if (rows[i].querySelector('.text').textContent.indexOf(arguments[0]) >= 0) return rows[i];
      }
      return null;""", text)


def row_text(b, text):
    """The whole text of that row, read in the same script (a row may be replaced at any moment)."""
    return b.execute_script("""
      var rows = document.querySelectorAll('#messages li.message');
      for (var i = 0; i < rows.length; i++) {
        if (rows[i].querySelector('.text').textContent.indexOf(arguments[0]) >= 0) return rows[i].innerText;
      }
      return null;""", text) or ""


def test_create_invite_chat_and_read_markers_across_devices(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob, bob2 = browsers(), browsers(), browsers()
    for b, name in ((alice, "alice"), (bob, "bob"), (bob2, "bob")):
        signed_in(b, d, name)
    # alice makes a private room through the dialog.
    alice.find_element(By.ID, "new-room").click()
    alice.find_element(By.ID, "create-name").send_keys("Team")
    alice.find_element(By.ID, "create-room-title").send_keys("The team")
    alice.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="private"]').click()
    alice.find_element(By.ID, "create-submit").click()
    wait(alice, lambda x: x.find_element(By.ID, "room-title").text == "#The team")
    # and invites bob by name.
    alice.find_element(By.ID, "invite").click()
    alice.find_element(By.ID, "invite-user").send_keys("bob")
    alice.find_element(By.ID, "invite-submit").click()
    for b in (bob, bob2):
        wait(b, lambda x: "team" in sidebar(x))
    send(alice, "hello team")
    wait(alice, lambda x: "hello team" in messages(x))
    for b in (bob, bob2):
        wait(b, lambda x: sidebar(x)["team"] == "1")
    assert bob.title.startswith("(1)")
    shot(bob, "rooms-1-badge")
    # bob reads it on one device: the badge clears on the other.
    open_room(bob, "team")
    wait(bob, lambda x: "hello team" in messages(x))
    wait(bob, lambda x: sidebar(x)["team"] == "")
    wait(bob2, lambda x: sidebar(x)["team"] == "", timeout=10)
    assert not bob2.title.startswith("(")
    # Members panel: both, with online dots.
    wait(bob, lambda x: [li.text for li in x.find_elements(By.CSS_SELECTOR, "#members li")] == ["alice", "bob"])
    assert len(bob.find_elements(By.CSS_SELECTOR, "#members li.is-online")) == 2
    # The room is kept across a reload.
    bob.refresh()
    wait(bob, connected)
    wait(bob, lambda x: x.find_element(By.ID, "room-title").text == "#The team")
    wait(bob, lambda x: "hello team" in messages(x))
    shot(bob, "rooms-2-after-reload")


def test_directory_join_leave_and_typing(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob = browsers(), browsers()
    signed_in(alice, d, "alice")
    signed_in(bob, d, "bob")
    alice.find_element(By.ID, "new-room").click()
    alice.find_element(By.ID, "create-name").send_keys("general-talk")
    alice.find_element(By.ID, "create-topic").send_keys("anything goes")
    alice.find_element(By.ID, "create-submit").click()
    wait(alice, lambda x: x.find_element(By.ID, "room-topic").text == "anything goes")
    bob.find_element(By.ID, "browse-rooms").click()
    bob.find_element(By.ID, "directory-query").send_keys("GENERAL")
    wait(bob, lambda x: "general-talk" in x.find_element(By.ID, "directory-list").text)
    shot(bob, "rooms-3-directory")
    bob.find_element(By.CSS_SELECTOR, "#directory-list button").click()
    wait(bob, lambda x: x.find_element(By.ID, "room-title").text == "#general-talk")
    bob.find_element(By.ID, "message-input").send_keys("typing here")
    wait(alice, lambda x: x.find_element(By.ID, "typing").text == "bob is typing…")
    bob.find_element(By.ID, "send-button").click()
    wait(alice, lambda x: "typing here" in messages(x))
    bob.find_element(By.ID, "leave").click()
    bob.switch_to.alert.accept()
    wait(bob, lambda x: "general-talk" not in sidebar(x) and x.find_element(By.ID, "room-title").text == "#lobby")


def test_dm_edit_delete_react_reply(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob = browsers(), browsers()
    signed_in(alice, d, "alice")
    signed_in(bob, d, "bob")
    # A dm from bob's name in the online list: encrypted (test_browser_e2ee.py has what is said in it).
    wait(alice, lambda x: "bob" in x.find_element(By.ID, "online").text.split("\n"))
    alice.find_element(By.CSS_SELECTOR, '#online button[data-user="bob"]').click()
    wait(alice, lambda x: x.find_element(By.ID, "room-title").text == "@bob")
    assert alice.find_element(By.ID, "e2ee-note").is_displayed()
    wait(bob, lambda x: "dm:alice:bob" in sidebar(x))
    assert bob.find_element(By.CSS_SELECTOR, '#sidebar button[data-room="dm:alice:bob"]').text.startswith("@alice")
    shot(alice, "rooms-4-dm-encrypted")
    # Lifecycle in the lobby.
    open_room(alice, "lobby")
    send(alice, "the first draft")
    wait(bob, lambda x: row(x, "the first draft") is not None)
    mine = row(alice, "the first draft")
    ActionChains(alice).move_to_element(mine).perform()
    mine.find_element(By.CSS_SELECTOR, 'button[data-action="edit"]').click()
    box = alice.find_element(By.CSS_SELECTOR, "#messages .edit-box")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("the final text", Keys.ENTER)
    wait(bob, lambda x: "(edited)" in row_text(x, "the final text"))
    theirs = row(bob, "the final text")
    ActionChains(bob).move_to_element(theirs).perform()
    assert theirs.find_elements(By.CSS_SELECTOR, 'button[data-action="edit"]') == []   # not bob's to edit
    theirs.find_element(By.CSS_SELECTOR, 'button[data-action="react"]').click()
    bob.find_element(By.CSS_SELECTOR, '#messages .picker button[data-emoji="👍"]').click()
    wait(alice, lambda x: "👍 1" in row_text(x, "the final text"))
    wait(bob, lambda x: "👍 1" in row_text(x, "the final text"))   # bob's row is redrawn by it too
    theirs = row(bob, "the final text")
    ActionChains(bob).move_to_element(theirs).perform()
    theirs.find_element(By.CSS_SELECTOR, 'button[data-action="reply"]').click()
    assert "Replying to alice" in bob.find_element(By.ID, "reply-bar").text
    send(bob, "agreed")
    wait(alice, lambda x: "↪ alice: the final text" in row_text(x, "agreed"))
    shot(alice, "rooms-5-edit-react-reply")
    mine = row(alice, "the final text")
    ActionChains(alice).move_to_element(mine).perform()
    mine.find_element(By.CSS_SELECTOR, 'button[data-action="delete"]').click()
    alice.switch_to.alert.accept()
    for b in (alice, bob):
        wait(b, lambda x: row(x, "the final text") is None and row(x, "This message was deleted.") is not None)
    shot(bob, "rooms-6-deleted")


def test_scrollback_loads_older_history(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    session = d.login("alice")

    async def seed():
        c = await Client.connect(d, session)
        await c.send({"type": "create_room", "name": "long", "kind": "public", "ref": "mk"})
        await c.wait_for(lambda f: f.get("ref") == "mk")
        for i in range(130):
            await c.send({"type": "send", "room": "long", "text": "old message %03d" % i, "ref": "s%d" % i})
        await c.wait_for(lambda f: f.get("ref") == "s129")
        await c.close()

    run(seed())
    a = browsers()
    signed_in(a, d, "alice")
    open_room(a, "long")
    wait(a, lambda x: "old message 129" in messages(x))
    assert len(messages(a)) == 50
    for _ in range(10):
        shown = len(messages(a))
        a.execute_script("document.getElementById('messages').scrollTop = 0")
        if "old message 000" in messages(a):
            break
        wait(a, lambda x: len(messages(x)) > shown, timeout=5)
    wait(a, lambda x: "old message 000" in messages(x))
    shown = messages(a)
    assert shown == ["old message %03d" % i for i in range(130)]
    shot(a, "rooms-7-scrollback")


def test_phone_width_and_keyboard_and_names(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    a = browsers()
    a.set_window_size(360, 740)
    signed_in(a, d, "alice")
    width = a.execute_script("return window.innerWidth")
    assert a.execute_script("return document.documentElement.scrollWidth") <= width
    assert not a.find_element(By.ID, "sidebar").is_displayed()
    a.find_element(By.ID, "rooms-toggle").click()
    wait(a, lambda x: x.find_element(By.ID, "sidebar").is_displayed())
    assert a.find_element(By.ID, "rooms-toggle").get_attribute("aria-expanded") == "true"
    shot(a, "rooms-8-phone-sidebar")
    a.find_element(By.CSS_SELECTOR, '#sidebar button[data-room="lobby"]').click()
    wait(a, lambda x: not x.find_element(By.ID, "sidebar").is_displayed())
    # Keyboard alone: Tab reaches the message box, Enter sends, focus is visible.
    a.find_element(By.ID, "message-input").click()
    a.find_element(By.ID, "message-input").send_keys("typed with keys", Keys.ENTER)
    wait(a, lambda x: "typed with keys" in messages(x))
    a.execute_script("document.activeElement.blur(); document.body.focus()")
    ActionChains(a).send_keys(Keys.TAB).perform()
    focused = a.execute_script("return document.activeElement")
    assert focused.tag_name == "button"
    assert a.execute_script("return getComputedStyle(document.activeElement).outlineStyle") != "none"
    shot(a, "rooms-9-phone")
    # Every control in the accessibility tree has a name.
    tree = a.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]
    controls = [n for n in tree if not n.get("ignored") and n.get("role", {}).get("value") in
                ("button", "textbox", "searchbox", "checkbox", "radio", "combobox", "link")]
    assert controls
    unnamed = [n for n in controls if not (n.get("name", {}).get("value") or "").strip()]
    assert unnamed == [], unnamed


def test_reconnect_replays_every_loaded_room(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    alice, bob = browsers(), browsers()
    signed_in(alice, d, "alice")
    signed_in(bob, d, "bob")
    # An empty room alice has open, and the lobby she has seen: both are replayed after a reconnect.
    alice.find_element(By.ID, "new-room").click()
    alice.find_element(By.ID, "create-name").send_keys("ops")
    alice.find_element(By.ID, "create-submit").click()
    wait(alice, lambda x: x.find_element(By.ID, "room-title").text == "#ops")
    wait(alice, lambda x: "No messages yet." in x.find_element(By.ID, "messages").text)
    bob.find_element(By.ID, "browse-rooms").click()
    wait(bob, lambda x: "ops" in x.find_element(By.ID, "directory-list").text)
    bob.find_element(By.CSS_SELECTOR, "#directory-list button").click()
    wait(bob, lambda x: x.find_element(By.ID, "room-title").text == "#ops")
    alice.execute_script(WATCH_STATES)
    # alice connected first, to the least loaded worker: worker-1.
    d.kill("worker-1")
    sent = ["while alice was away %d" % i for i in range(3)]
    for text in sent:
        send(bob, text)
        wait(bob, lambda x: text in messages(x))
    wait(alice, lambda x: messages(x) == sent, timeout=20)
    wait(alice, connected)
    assert "reconnecting" in alice.execute_script("return window.__states")
    open_room(alice, "lobby")
    open_room(alice, "ops")
    wait(alice, lambda x: messages(x) == sent)          # nothing twice after a redraw either
    shot(alice, "rooms-10-reconnected")


def test_the_room_and_its_scroll_position_survive_a_reload(make_deployment, browsers):
    d = rooms_deployment(make_deployment)
    session = d.login("alice")

    async def seed():
        c = await Client.connect(d, session)
        await c.send({"type": "create_room", "name": "tall", "kind": "public", "ref": "mk"})
        await c.wait_for(lambda f: f.get("ref") == "mk")
        for i in range(60):
            await c.send({"type": "send", "room": "tall", "text": "line %02d" % i, "ref": "t%d" % i})
        await c.wait_for(lambda f: f.get("ref") == "t59")
        await c.close()

    run(seed())
    a = browsers()
    signed_in(a, d, "alice")
    open_room(a, "tall")
    wait(a, lambda x: "line 59" in messages(x))
    from_bottom = "var l = document.getElementById('messages'); return l.scrollHeight - l.scrollTop - l.clientHeight"
    a.execute_script("var l = document.getElementById('messages'); l.scrollTop = l.scrollHeight - l.clientHeight - 300;"
                     "l.dispatchEvent(new Event('scroll'))")
    wait(a, lambda x: abs(x.execute_script(from_bottom) - 300) < 5)
    a.refresh()
    wait(a, connected)
    wait(a, lambda x: x.find_element(By.ID, "room-title").text == "#tall" and "line 59" in messages(x))
    wait(a, lambda x: abs(x.execute_script(from_bottom) - 300) < 40)
