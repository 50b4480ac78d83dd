"""The crypto core of the web client (web/e2ee.js) in a real browser: Chromium runs
Tests/WebCrypto/crypto-test.html, which checks the sender chain, the message keys,
AES-GCM and Ed25519 against known answers made with Python's `cryptography`
(Tests/WebCrypto/make_vectors.py), and that tampered, wrongly signed, replayed and
moved messages are refused."""
import os

from test_browser import ARTIFACTS, browsers, wait  # noqa: F401 (browsers is a fixture)
from conftest import ROOT


def test_crypto_core_against_known_vectors(browsers):
    b = browsers()
    b.get("file://" + os.path.join(ROOT, "Tests", "WebCrypto", "crypto-test.html"))
    wait(b, lambda x: x.execute_script("return window.__done === true"), timeout=30)
    results = b.execute_script("return window.__results")
    os.makedirs(ARTIFACTS, exist_ok=True)
    b.save_screenshot(os.path.join(ARTIFACTS, "crypto-tests.png"))
    failed = [r for r in results if not r["ok"]]
    assert len(results) >= 34 and failed == [], failed
