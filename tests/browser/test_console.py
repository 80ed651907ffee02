"""The Ops Console in a real browser (Debian's chromium driven by Playwright).

Run by scripts/browser-tests.sh, which starts `ledger serve` on a fresh
database and hands over, in the environment: CONSOLE_BASE, the tokens
CONSOLE_OPERATOR_TOKEN, CONSOLE_ADMIN_TOKEN (an agency admin) and
CONSOLE_SUSPEND_TOKEN (an admin of CONSOLE_SUSPEND_AGENCY, which the test
suspends), and CONSOLE_ARTIFACTS, where screenshots go.
"""

import datetime
import json
import os
import shutil
import sys
import time
import traceback
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["CONSOLE_BASE"]
OPERATOR = os.environ["CONSOLE_OPERATOR_TOKEN"]
ADMIN = os.environ["CONSOLE_ADMIN_TOKEN"]
SUSPEND_AGENCY = os.environ["CONSOLE_SUSPEND_AGENCY"]
SUSPEND_TOKEN = os.environ["CONSOLE_SUSPEND_TOKEN"]
ARTIFACTS = os.environ["CONSOLE_ARTIFACTS"]
CONSOLE = f"{BASE}/console/"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 30_000


def api(method, path, token, body=None):
    """One call to the service: (status, JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{BASE}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def seed():
    """Events for the replay to rebuild, and agency records for both admins."""
    status, prop = api(
        "POST",
        "/api/v1/properties",
        ADMIN,
        {"name": "Sea View", "timezone": "Europe/Lisbon"},
    )
    assert status == 201, (status, prop)
    first = datetime.date(2031, 1, 1)
    for day in range(0, 120, 2):
        check_in = (first + datetime.timedelta(days=day)).isoformat()
        check_out = (first + datetime.timedelta(days=day + 1)).isoformat()
        status, body = api(
            "POST",
            "/api/v1/bookings",
            ADMIN,
            {
                "property_id": prop["id"],
                "check_in": check_in,
                "check_out": check_out,
                "guest": {"name": "Ana Guest", "email": "ana@example.com"},
            },
        )
        assert status == 201, (status, body)
    status, body = api("GET", "/api/v1/properties", SUSPEND_TOKEN)
    assert status == 200, (status, body)


class Browser:
    """One chromium for every test; a fresh context (own session storage) per page."""

    def __init__(self, playwright):
        self.browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )

    def page(self, viewport=DESKTOP):
        context = self.browser.new_context(viewport=viewport)
        page = context.new_page()
        page.problems = []
        page.requested = []
        page.on(
            "console",
            lambda m: m.type == "error" and page.problems.append(m.text),
        )
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.on("request", lambda r: page.requested.append(r.url))
        return page


def shot(page, name):
    path = os.path.join(ARTIFACTS, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    return path


def sign_in_by_form(page, token):
    page.goto(CONSOLE)
    page.get_by_label("Bearer token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def confirm(page, reason=None):
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    if reason is not None:
        dialog.get_by_label("Reason (optional)").fill(reason)
    dialog.locator("#confirm-ok").click()
    expect(dialog).to_be_hidden()


def test_an_operator_sees_every_projection_and_the_token_leaves_the_address(browser):
    page = browser.page()
    page.goto(f"{CONSOLE}#token={OPERATOR}")
    for name in ("inventory", "views", "audit"):
        row = page.locator(f'tr[data-projection="{name}"]')
        expect(row).to_be_visible(timeout=WAIT_MS)
        expect(row.locator("progress")).to_be_visible()
    expect(page.locator("#health-db")).to_have_text("ok")
    expect(page.locator("#commit-version")).not_to_have_text("…")
    expect(page.locator("#who")).to_contain_text("operator")
    assert "token" not in page.url, page.url
    assert page.evaluate("sessionStorage.getItem('ledger-console-token')") == OPERATOR
    assert not any(OPERATOR in url for url in page.requested), "token in a URL"
    # A refresh updates the rows in place: the same nodes stay.
    first = page.locator('tr[data-projection="views"]').element_handle()
    expect(page.locator("#refresh-state")).to_contain_text("Refreshed")
    before = page.locator("#refresh-state").text_content()
    expect(page.locator("#refresh-state")).not_to_have_text(before, timeout=WAIT_MS)
    assert first.evaluate("node => node.isConnected"), "the row was re-created"
    assert page.problems == [], page.problems


def test_an_operator_replays_a_projection_and_the_bar_reaches_the_end(browser):
    page = browser.page()
    page.goto(f"{CONSOLE}#token={OPERATOR}")
    page.get_by_role("button", name="Replay views").click()
    confirm(page)
    replay = page.locator('li[data-replay="views"]')
    expect(replay).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    bar = replay.locator("progress")
    value, maximum = bar.get_attribute("value"), bar.get_attribute("max")
    assert int(maximum) > 60 and value == maximum, (value, maximum)
    expect(replay).to_contain_text("swapped in")
    expect(page.locator('tr[data-projection="views"]')).to_have_attribute(
        "data-status", "running", timeout=WAIT_MS
    )
    assert page.problems == [], page.problems


def test_an_operator_suspends_an_agency_and_its_token_is_refused(browser):
    page = browser.page()
    page.goto(f"{CONSOLE}#token={OPERATOR}")
    row = page.locator(f'tr[data-agency="{SUSPEND_AGENCY}"]')
    expect(row).to_have_attribute("data-status", "active", timeout=WAIT_MS)
    row.get_by_role("button", name="Suspend").click()
    confirm(page, reason="unpaid invoices")
    expect(row).to_have_attribute("data-status", "suspended", timeout=WAIT_MS)
    expect(row.locator(".badge")).to_have_text("suspended")
    expect(row).to_contain_text("unpaid invoices")
    deadline = time.monotonic() + 5
    while True:
        status, body = api("GET", "/api/v1/properties", SUSPEND_TOKEN)
        if status == 403 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 403 and body["error"]["code"] == "AGENCY_SUSPENDED", (status, body)

    export = row.locator('button[data-feature="ical_export"]')
    expect(export).to_have_attribute("aria-pressed", "true")
    export.click()
    confirm(page)
    expect(export).to_have_attribute("aria-pressed", "false", timeout=WAIT_MS)
    expect(export).to_have_text("iCal export: off")
    shot(page, "operator-desktop")
    page.set_viewport_size(PHONE)
    shot(page, "operator-phone")

    row.get_by_role("button", name="Reinstate").click()
    confirm(page)
    expect(row).to_have_attribute("data-status", "active", timeout=WAIT_MS)
    assert page.problems == [], page.problems


def test_an_agency_admin_sees_the_projections_and_no_operator_control(browser):
    page = browser.page()
    sign_in_by_form(page, ADMIN)
    for name in ("inventory", "views", "audit"):
        expect(page.locator(f'tr[data-projection="{name}"]')).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#who")).to_contain_text("read-only")
    expect(page.locator("#commit-version")).not_to_have_text("…")
    expect(page.get_by_role("button", name="Replay views")).to_have_count(0)
    expect(page.locator("button.retry")).to_have_count(0)
    expect(page.locator("#agencies")).to_be_hidden()
    expect(page.locator("#resync")).to_be_hidden()
    expect(page.get_by_role("columnheader", name="Actions")).to_be_hidden()
    shot(page, "admin-desktop")
    page.set_viewport_size(PHONE)
    shot(page, "admin-phone")
    assert page.problems == [], page.problems


def test_a_wrong_token_shows_a_clear_message(browser):
    page = browser.page(PHONE)
    sign_in_by_form(page, "not-a-token")
    notice = page.locator("#notice")
    expect(notice).to_be_visible(timeout=WAIT_MS)
    expect(notice).to_contain_text("This token was refused")
    expect(notice).to_contain_text("request id")
    expect(page.get_by_label("Bearer token")).to_be_visible()
    expect(page.locator("#dashboard")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('ledger-console-token')") is None
    shot(page, "wrong-token-phone")


TESTS = [
    test_an_operator_sees_every_projection_and_the_token_leaves_the_address,
    test_an_operator_replays_a_projection_and_the_bar_reaches_the_end,
    test_an_operator_suspends_an_agency_and_its_token_is_refused,
    test_an_agency_admin_sees_the_projections_and_no_operator_control,
    test_a_wrong_token_shows_a_clear_message,
]


def main():
    expect.set_options(timeout=10_000)
    seed()
    passed = failed = 0
    with sync_playwright() as playwright:
        browser = Browser(playwright)
        for test in TESTS:
            try:
                test(browser)
                passed += 1
                print(f"test {test.__name__} ... ok", flush=True)
            except Exception:  # noqa: BLE001 - every failure is reported, then counted
                failed += 1
                print(f"test {test.__name__} ... FAILED", flush=True)
                traceback.print_exc()
        browser.browser.close()
    if os.environ.get("CONSOLE_UPDATE_DOCS") == "1" and failed == 0:
        docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "console.png")
        shutil.copyfile(os.path.join(ARTIFACTS, "operator-desktop.png"), docs)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
