"""A real headless Chromium (Debian's, as deploy/setup.sh installs it) driven by Playwright, for
the web app's tests: one browser per test module, a fresh context (cookies, storage) per user,
and screenshots kept under test-artifacts/web/ (git-ignored)."""
from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest

from controlplane.accounts import store as accounts
from tests.conftest import REPO

ARTIFACTS = REPO / "test-artifacts" / "web"
PASSWORD = "a browser's password"
# As the machine's notes say: no sandbox as root, and none of Chromium's own network traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no chromium on PATH: `make setup` installs Debian's chromium")
    return found


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


class WebUser:
    def __init__(self, row: dict, key: str):
        self.row, self.key, self.id, self.email = row, key, row["id"], row["email"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_web_user(conn) -> WebUser:
    row = accounts.create_user(conn, f"web-{uuid.uuid4().hex[:10]}@example.com", password=PASSWORD)
    _, key = accounts.create_api_key(conn, row["id"], "test")
    return WebUser(row, key)


def signed_in_page(browser, base_url: str, user: WebUser, *, width: int = 1100, height: int = 900):
    """A new browser context signed in as `user` through the sign-in form; returns its page."""
    context = browser.new_context(base_url=base_url, viewport={"width": width, "height": height})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.js_errors = []  # a script that throws fails the test that sees it (check_no_js_errors)
    page.on("pageerror", lambda err: page.js_errors.append(str(err)))
    page.goto("/sessions")
    assert "/sign-in" in page.url
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/sessions")
    return page


def check_no_js_errors(page) -> None:
    assert not page.js_errors, page.js_errors
