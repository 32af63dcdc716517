"""The web client driven in Debian's chromium (Playwright): launch options and page actions."""

from __future__ import annotations

from playwright.sync_api import BrowserContext, Locator, Page, expect

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic", "--autoplay-policy=no-user-gesture-required"]
PASSWORD = "listen-along-1"


def register(context: BrowserContext, url: str, name: str, email: str) -> Page:
    page = context.new_page()
    page.goto(url + "/")
    form = page.locator("#register-form")
    form.get_by_label("Display name").fill(name)
    form.get_by_label("Email").fill(email)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Register").click()
    expect(page.locator("#me-name")).to_have_text(name, timeout=15_000)
    return page


def join(page: Page, room: str) -> None:
    page.locator(f'#rooms button[data-room="{room}"]').click()
    expect(page.locator("#room")).to_have_attribute("data-connected", "true", timeout=15_000)


def say(page: Page, text: str) -> None:
    page.locator("#text").fill(text)
    page.locator("#composer button[type=submit]").click()


def message(page: Page, text: str) -> Locator:
    """The message whose own text contains `text` (a reply's quote does not count)."""
    return page.locator("#messages li.msg").filter(has=page.locator(".text", has_text=text))
