"""The web client in a real browser: Debian's chromium driven through Debian's
chromedriver by Selenium. Each test saves a screenshot of its final state in
test-artifacts/browser/."""
import base64
import os
import re
import shutil
import signal
import subprocess

import pytest
from selenium import webdriver
from selenium.common.exceptions import (NoAlertPresentException, NoSuchElementException,
                                        StaleElementReferenceException, WebDriverException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import BIN, ROOT, password_for

ARTIFACTS = os.path.join(ROOT, "test-artifacts", "browser")

# Records every state the connection badge goes through, however briefly.
WATCH_STATES = """
window.__states = [document.getElementById('connection').dataset.state];
new MutationObserver(function () {
  window.__states.push(document.getElementById('connection').dataset.state);
}).observe(document.getElementById('connection'), {attributes: true});
"""


@pytest.fixture
def browsers():
    made = []

    def make():
        o = webdriver.ChromeOptions()
        for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors",
                  "--window-size=1100,700"]:
            o.add_argument(a)
        o.binary_location = shutil.which("chromium")
        o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)
        d.implicitly_wait(0)
        made.append(d)
        return d

    yield make
    for d in made:
        d.quit()


def shot(driver, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    driver.save_screenshot(os.path.join(ARTIFACTS, name + ".png"))


def wait(driver, condition, timeout=10):
    """Polls condition until it holds, within timeout. A read that lands while the page
    navigates (the login's redirect to /chat, a reload) is asked again, not failed:
    chromedriver answers it with "aborted by navigation", or finds an element that has
    just gone away. Any other error still fails the test at once."""
    def check(d):
        try:
            return condition(d)
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        except WebDriverException as e:
            if "aborted by navigation" in (e.msg or ""):
                return False
            raise
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(check)


def login(driver, deployment, name, password=None):
    driver.get(deployment.base + "/")
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password or password_for(name))
    driver.find_element(By.ID, "login-button").click()


def connected(driver):
    return driver.find_element(By.ID, "connection").get_attribute("data-state") == "online"


def messages(driver):
    """The texts of the open room's messages, read in one script: the list may be redrawn
    between two element reads (a reconnect's replay, a history page)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#messages li.message .text')).map(function (e) { return e.textContent; })")


def send(driver, text):
    box = driver.find_element(By.ID, "message-input")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send-button").click()


def test_login_reload_logout(deployment, browsers):
    b = browsers()
    login(b, deployment, "alice", "wrong password")
    wait(b, lambda d: d.find_element(By.ID, "login-error").is_displayed())
    assert "Wrong user name or password" in b.find_element(By.ID, "login-error").text
    assert b.current_url == deployment.base + "/"
    login(b, deployment, "alice")
    wait(b, lambda d: d.current_url == deployment.base + "/chat")
    wait(b, connected)
    b.refresh()
    wait(b, connected)
    assert b.current_url == deployment.base + "/chat"
    assert "alice" in b.find_element(By.ID, "me").text
    b.find_element(By.ID, "logout").click()
    wait(b, lambda d: d.current_url == deployment.base + "/")
    b.get(deployment.base + "/chat")
    wait(b, lambda d: d.current_url == deployment.base + "/")
    assert b.find_elements(By.ID, "login-form")
    shot(b, "1-logged-out")


def test_two_users_chat_presence_and_departure(deployment, browsers):
    a, b = browsers(), browsers()
    login(a, deployment, "alice")
    wait(a, connected)
    login(b, deployment, "bob")
    wait(b, connected)
    for d, other in ((a, "bob"), (b, "alice")):
        wait(d, lambda d: other in d.find_element(By.ID, "online").text.split("\n"))
    send(a, "Hello Bob, this is Alice")
    for d in (a, b):
        wait(d, lambda d: "Hello Bob, this is Alice" in messages(d))
        row = d.find_elements(By.CSS_SELECTOR, "#messages li.message")[-1]
        assert row.find_element(By.CSS_SELECTOR, ".author").text == "alice"
        assert row.find_element(By.CSS_SELECTOR, "time").text.strip() != ""
    shot(b, "2-bob-sees-alice")
    b.close()
    wait(a, lambda d: "bob left" in d.find_element(By.ID, "messages").text)
    wait(a, lambda d: "bob" not in d.find_element(By.ID, "online").text.split("\n"))
    shot(a, "2-alice-sees-bob-leave")


def test_markup_is_rendered_as_text(deployment, browsers):
    a = browsers()
    login(a, deployment, "alice")
    wait(a, connected)
    hostile = '<img src=x onerror=alert(1)> <script>alert(2)</script> <b>bold?</b>'
    send(a, hostile)
    wait(a, lambda d: hostile in messages(d))
    with pytest.raises(NoAlertPresentException):
        a.switch_to.alert.text
    assert a.find_elements(By.CSS_SELECTOR, "#messages img, #messages script, #messages b") == []
    assert a.execute_script("return window.__xss === undefined")
    shot(a, "3-markup-as-text")
    # A user name cannot carry markup at all: the users file refuses it.
    out = subprocess.run([os.path.join(BIN, "securechat"), "users", "add", "<b>x</b>", "--users-file",
                          os.path.join(deployment.state, "nope.json")], input="long enough password\n",
                         text=True, capture_output=True)
    assert out.returncode != 0 and "user names" in out.stderr


def test_bidi_controls_in_a_text_cannot_move_its_author_or_time(deployment, browsers):
    a = browsers()
    login(a, deployment, "alice")
    wait(a, connected)
    # U+202E (right-to-left override) unclosed, then what a spoofer wants to be read backwards.
    spoof = "\u202e:nimda 00:21"
    send(a, spoof)
    wait(a, lambda d: any("nimda" in t for t in messages(d)))
    row = a.find_elements(By.CSS_SELECTOR, "#messages li.message")[-1]
    text, author, time_ = (row.find_element(By.CSS_SELECTOR, s) for s in (".text", ".author", "time"))
    assert a.execute_script("return getComputedStyle(arguments[0]).unicodeBidi", text) == "isolate"
    assert text.get_attribute("dir") == "auto"
    # Laid out in order: time, then author, then the text, left to right.
    assert time_.rect["x"] < author.rect["x"] < text.rect["x"]


def test_worker_killed_page_reconnects_and_misses_nothing(deployment, browsers):
    a, b = browsers(), browsers()
    login(a, deployment, "alice")
    wait(a, connected)
    login(b, deployment, "bob")
    wait(b, connected)
    a.execute_script(WATCH_STATES)
    send(b, "before the crash")
    wait(a, lambda d: "before the crash" in messages(d))
    # alice connected first, to the least loaded worker: worker-1 (ties go by id).
    deployment.kill("worker-1")
    sent = ["while you were away %d" % i for i in range(3)]
    for text in sent:
        send(b, text)
        wait(b, lambda d: text in messages(d))
    wait(a, lambda d: all(t in messages(d) for t in sent), timeout=20)
    wait(a, connected)
    states = a.execute_script("return window.__states")
    assert "reconnecting" in states and states[-1] == "online", states
    shown = messages(a)
    assert len(shown) == len(set(shown)), shown           # nothing twice
    assert shown[-4:] == ["before the crash"] + sent      # nothing missed, in order
    shot(a, "4-reconnected")


def test_rate_limit_feedback_keeps_the_text(make_deployment, browsers):
    # A burst of 5, then one message every 20 s: however slowly a loaded machine sends the
    # burst, the bucket cannot refill before the sixth (at the default 1/s it could).
    deployment = make_deployment(extra_args=["--msg-burst", "5", "--msg-per-second", "0.05"])
    a = browsers()
    login(a, deployment, "alice")
    wait(a, connected)
    for i in range(5):
        send(a, "burst %d" % i)
        wait(a, lambda d: "burst %d" % i in messages(d))
    send(a, "one too many")
    wait(a, lambda d: d.find_element(By.ID, "send-error").is_displayed())
    assert "too fast" in a.find_element(By.ID, "send-error").text
    assert a.find_element(By.ID, "message-input").get_attribute("value") == "one too many"
    assert "one too many" not in messages(a)
    shot(a, "5-rate-limited")


def test_content_security_policy_blocks_inline_script(deployment, browsers):
    a = browsers()
    login(a, deployment, "alice")
    wait(a, connected)
    own = [l for l in a.get_log("browser") if "Content Security Policy" in l["message"]]
    assert own == [], own
    # Trusted Types refuse even to put text into a script element; were it there, CSP would not run it.
    refused = a.execute_script("""
      var s = document.createElement('script');
      try { s.textContent = 'window.__probe = 1'; } catch (e) { return e.name; }
      document.body.appendChild(s);
      return null;
    """)
    assert refused == "TypeError"
    assert a.execute_script("return window.__probe === undefined")
    blocked = [l for l in a.get_log("browser") if "TrustedScript" in l["message"] or "Content Security Policy" in l["message"]]
    assert blocked, "the probe was not reported as blocked"
    # Subresource Integrity: the page's own style sheet under a wrong pin is refused (a script's
    # src cannot even be set here: Trusted Types), under its right pin loaded.
    load = """
      var done = arguments[arguments.length - 1];
      var l = document.createElement('link');
      l.rel = 'stylesheet';
      l.integrity = arguments[0];
      l.href = '/static/style.css?probe=' + Math.random();
      l.onload = function () { done('loaded'); };
      l.onerror = function () { done('refused'); };
      document.head.appendChild(l);
    """
    assert a.execute_async_script(load, "sha384-" + base64.b64encode(b"x" * 48).decode()) == "refused"
    right = a.execute_script("return document.querySelector('link[rel=stylesheet]').integrity")
    assert a.execute_async_script(load, right) == "loaded"
    shot(a, "6-csp")


def test_every_page_pins_its_scripts_with_subresource_integrity():
    # The pins in web/*.html match the files beside them (scripts/sri writes them).
    out = subprocess.run([os.path.join(ROOT, "scripts", "sri"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for page in ("chat.html", "login.html"):
        text = open(os.path.join(ROOT, "web", page)).read()
        tags = re.findall(r'<(?:script|link)[^>]*(?:src|href)="/static/[^"]+\.(?:js|css)"[^>]*>', text)
        assert tags and all('integrity="sha384-' in t for t in tags), (page, tags)
