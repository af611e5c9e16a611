#!/usr/bin/env python3
"""A person watching the console while the relay receives: Debian's headless Chromium,
logged in, on the dashboard (which htmx refreshes every 3 s) until SIGTERM.

Used by `bench/cstore_throughput.py --console`; prints "ready" once the dashboard shows.

    .venv/bin/python bench/console_poller.py http://127.0.0.1:8124 NAME PASSWORD
"""

from __future__ import annotations

import shutil
import signal
import sys

from playwright.sync_api import sync_playwright

FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def main(base: str, name: str, password: str) -> int:
    stop = False

    def stopping(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, stopping)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        page = browser.new_page()
        page.goto(f"{base}/login?next=/")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_selector("#jobs-delivered")
        print("ready", flush=True)
        while not stop:
            page.wait_for_timeout(200)  # the page's own htmx polls meanwhile
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
