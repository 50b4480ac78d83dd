"""Encrypt+sign and verify+decrypt per message of web/e2ee.js in Debian's headless
Chromium (docs/benchmarks.md): runs Tests/WebCrypto/crypto-test.html?bench&n=N a few
times and prints each run's figures as JSON.

    .venv/bin/python Benchmarks/browser_crypto.py [--messages 500] [--runs 3]"""
import argparse
import json
import os
import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    o = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage"]:
        o.add_argument(a)
    o.binary_location = shutil.which("chromium")
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)
    try:
        for _ in range(args.runs):
            d.get("file://%s?bench&n=%d" % (os.path.join(ROOT, "Tests", "WebCrypto", "crypto-test.html"), args.messages))
            WebDriverWait(d, 300, poll_frequency=0.1).until(lambda x: x.execute_script("return !!window.__bench"))
            print(json.dumps(d.execute_script("return window.__bench"), sort_keys=True))
    finally:
        d.quit()


if __name__ == "__main__":
    main()
