"""The front-end example (docs/frontend-example/) in a real headless Chromium.

The page is served from another origin than the ledger (another port), and
that origin is in LEDGER_CORS_ORIGINS: the browser's own CORS checks, its
preflights and its EventSource are what is tested. The page reserves, edits
with If-Match (losing once to another desk, then winning) and shows the live
updates of the stream, including a channel's booking it did not make.

Run by scripts/browser-frontend.sh (which installs what it needs); plain
`python3 tests/browser/test_frontend.py` works too when playwright is there.
"""

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "frontend-example"
SECRET = os.environ.get("JWT_SECRET", "test-secret-for-the-ledger-integration-tests")
LEDGER = os.environ.get("LEDGER_BIN", str(ROOT / "target" / "debug" / "ledger"))
SERVER_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ledger")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(name):
    base, _, _ = SERVER_URL.rpartition("/")
    return f"{base}/{name}"


def psql(sql):
    subprocess.run(["psql", database_url("postgres"), "-qc", sql], check=True)


def call(method, url, token, body=None, headers=None):
    """One HTTP call from outside the browser (another desk, a channel)."""
    request = urllib.request.Request(url, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, data, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class Ledger:
    """`ledger serve` on a fresh database, with the page's origin listed."""

    def __init__(self, page_origin):
        self.db = f"ledger_browser_{uuid.uuid4().hex}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        psql(f"CREATE DATABASE {self.db}")
        env = dict(os.environ,
                   DATABASE_URL=database_url(self.db), JWT_SECRET=SECRET,
                   LEDGER_LISTEN=f"127.0.0.1:{self.port}", LEDGER_METRICS_LISTEN="127.0.0.1:0",
                   LEDGER_CORS_ORIGINS=page_origin, RUST_LOG="warn")
        self.process = subprocess.Popen([LEDGER, "serve"], env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=1):
                    return
            except OSError:
                assert self.process.poll() is None, "ledger exited"
                assert time.monotonic() < deadline, "ledger did not come up in 30 s"
                time.sleep(0.1)

    def token(self, agency, role, sub):
        out = subprocess.run(
            [LEDGER, "token", "--agency", agency, "--role", role, "--sub", sub],
            env=dict(os.environ, JWT_SECRET=SECRET), check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
        psql(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve_example():
    handler = functools.partial(QuietFiles, directory=str(EXAMPLE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_example_page_reserves_edits_with_if_match_and_receives_live_updates():
    pages = serve_example()
    page_origin = f"http://127.0.0.1:{pages.server_address[1]}"
    ledger = Ledger(page_origin)
    try:
        agency = str(uuid.uuid4())
        token = ledger.token(agency, "admin", "desk-1")
        status, prop = call("POST", f"{ledger.base}/api/v1/properties", token, {"name": "Casa Azul"})
        assert status == 201, prop

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            console_errors = []
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.goto(f"{page_origin}/index.html#api={ledger.base}&token={token}&property={prop['id']}")
            expect(page.locator("#stream-state")).to_have_text("open", timeout=10_000)

            # Reserve from the page: a cross-origin POST with a preflight.
            page.fill("#check-in", "2031-04-01")
            page.fill("#check-out", "2031-04-05")
            page.click("#reserve")
            expect(page.locator("#status")).to_contain_text("reserved", timeout=10_000)
            expect(page.locator("#status")).to_contain_text("1 booking(s)")
            expect(page.locator("#booking-etag")).to_have_text('"1"')
            booking_id = page.locator("#booking-id").inner_text()
            expect(page.locator(f'#events li[data-type="booking.reserved"][data-subject="{booking_id}"]')) \
                .to_have_count(1, timeout=10_000)

            # Another desk edits the same booking first.
            status, theirs = call("PATCH", f"{ledger.base}/api/v1/bookings/{booking_id}", token,
                                  {"notes": "from the other desk"}, {"If-Match": '"1"'})
            assert status == 200, theirs

            # The page's edit names version 1: refused, and it shows theirs.
            page.fill("#notes", "late arrival")
            page.click("#save-notes")
            expect(page.locator("#status")).to_contain_text("changed elsewhere", timeout=10_000)
            expect(page.locator("#booking-version")).to_have_text("2")
            expect(page.locator("#booking-notes")).to_have_text("from the other desk")

            # Saved again on top of version 2: it wins.
            page.click("#save-notes")
            expect(page.locator("#status")).to_contain_text("saved as version 3", timeout=10_000)
            expect(page.locator("#booking-notes")).to_have_text("late arrival")
            expect(page.locator('#events li[data-type="booking.modified"]')).to_have_count(2, timeout=10_000)

            # A channel's booking the page never made arrives live.
            status, channel = call("POST", f"{ledger.base}/api/v1/bookings", token, {
                "property_id": prop["id"], "check_in": "2031-05-01", "check_out": "2031-05-03",
                "guest": {"name": "Channel Guest"}, "channel": "airbnb", "external_ref": "HM42",
            })
            assert status == 201, channel
            expect(page.locator(f'#events li[data-subject="{channel["id"]}"]')).to_have_count(1, timeout=10_000)

            assert not [e for e in console_errors if "CORS" in e], console_errors
            browser.close()
    finally:
        ledger.stop()
        pages.shutdown()


if __name__ == "__main__":
    test_the_example_page_reserves_edits_with_if_match_and_receives_live_updates()
    print("test_frontend: ok")
    sys.exit(0)
