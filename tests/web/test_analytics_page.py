"""The analytics page (/admin/analytics) in Debian's chromium (Playwright), against a real API server (real
PostgreSQL, Redis, S3, SMTP: the API tests' fixtures) whose analytics store is filled with SQL: the admin logs in
on the main page, follows its Analytics link and sees the seeded figures as SVG bars and tables; a user who is not
an admin sees the API's refusal; without a session the page asks to log in. No request leaves the platform's
origin and the page's strict Content-Security-Policy refuses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Response, async_playwright, expect

from tests.api.conftest import api_database, mailbox, make_api, s3_env  # noqa: F401 - the API tests' real servers
from tests.support.analytics import apply_schema, seed
from tests.support.api import ADMIN_EMAIL, PASSWORD, ApiServer, ServerFactory
from tests.support.up import ROOT
from tests.support.web import ARGS, CHROMIUM

ARTIFACTS = ROOT / "test-artifacts" / "web"


@pytest.fixture(scope="module")
async def server(make_api: ServerFactory) -> ApiServer:  # noqa: F811 - the imported fixture
    """An API server (its analytics store: the platform database) with two days of figures, the latest ending
    two days ago: inside the page's default range (the last 7 days), and outside its shortest (the last 24 hours
    in whole hours: from 00:00 to 00:59 that reaches back to yesterday's midnight)."""
    api = await make_api()
    await apply_schema(api.database_url)
    await seed(api.database_url, datetime.now(UTC).date() - timedelta(days=3))
    await api.client.register_and_login(ADMIN_EMAIL, name="Root")  # the address confirmed: admin from now on
    return api


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: hack/bootstrap.sh installs Debian's chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


class Watched:
    """A page and what went wrong on it: console errors (a CSP refusal is one), requests off the origin, answers
    of 400 and more (but the browser's own /favicon.ico)."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page, self.problems = page, list[str]()

        def console(message: ConsoleMessage) -> None:
            # Chromium also logs each failed answer: those are checked by URL below.
            if message.type == "error" and not message.text.startswith("Failed to load resource"):
                self.problems.append(f"console: {message.text}")

        def answered(response: Response) -> None:
            if response.status >= 400 and not response.url.endswith("/favicon.ico"):
                self.problems.append(f"{response.status} {response.url.removeprefix(origin).split('?')[0]}")

        page.on("console", console)
        page.on("response", answered)
        page.on("request", lambda r: None if r.url.startswith(origin) else self.problems.append(f"request: {r.url}"))


async def opened(context: BrowserContext, base: str) -> Watched:
    return Watched(await context.new_page(), base)


async def log_in(page: Page, base: str, email: str) -> None:
    await page.goto(base + "/")
    form = page.locator("#login-form")
    await form.get_by_label("Email").fill(email)
    await form.get_by_label("Password").fill(PASSWORD)
    await form.get_by_role("button", name="Log in").click()
    await expect(page.locator("#app")).to_be_visible(timeout=15_000)


async def test_an_admin_sees_the_figures(server: ApiServer, browser: Browser) -> None:
    base = server.client.base
    context = await browser.new_context(viewport={"width": 1200, "height": 1400})
    try:
        watched = await opened(context, base)
        page = watched.page
        await log_in(page, base, ADMIN_EMAIL)
        link = page.locator("#analytics-link")
        await expect(link).to_be_visible(timeout=10_000)
        await link.click()
        await expect(page).to_have_url(f"{base}/admin/analytics")
        await expect(page.locator("#figures")).to_be_visible(timeout=15_000)

        # Messages: general 12 (09:00) and 30 (10:00) + lobby 5 (10:00) on the first day, general 7 at midnight.
        bars = page.locator("#messages-chart rect.bar")
        await expect(bars).to_have_count(4)
        assert sorted([int(v) for v in await bars.evaluate_all("rs => rs.map(r => r.dataset.value)")]) == [5, 7, 12, 30]
        await expect(page.locator("#messages-chart .y-max")).to_have_text("35")  # the 10:00 bar: 30 + 5 stacked
        await expect(page.locator('#messages-legend li[data-key="general"]')).to_have_text("general: 49 messages")
        title = await page.locator('#messages-chart rect.bar[data-value="30"] title').text_content()
        assert title is not None and title.startswith("general · ") and title.endswith("10:00 UTC: 30 messages")
        # Listening: radio mp3-128 30 min + opus-64 10 min (10:00), jazz 60 min (11:00), radio 1.5 min (01:00).
        await expect(page.locator("#listening-chart rect.bar")).to_have_count(4)
        await expect(page.locator("#listening-chart .y-max")).to_have_text("60")
        await expect(page.locator('#listening-legend li[data-key="radio mp3-128"]')).to_have_text(
            "radio mp3-128: 31.5 min")
        await expect(page.locator("#users-chart rect.bar")).to_have_count(2)
        # The tables: peaks newest first, tracks most played first.
        await expect(page.locator("#peaks tbody tr")).to_have_count(3)
        await expect(page.locator("#peaks tbody tr").nth(1)).to_contain_text("listeners")
        await expect(page.locator("#peaks tbody tr").nth(1)).to_contain_text("42")
        await expect(page.locator("#top-tracks tbody tr").first).to_contain_text("Tone A")
        await expect(page.locator("#top-tracks tbody tr")).to_have_count(3)

        # A shorter range leaves the seeded days out.
        await page.locator("#range").select_option("1")
        await expect(page.locator("#messages-chart rect.bar")).to_have_count(0)
        await expect(page.locator("#messages-chart .empty")).to_have_text("No data in this range")
        await page.locator("#range").select_option("7")
        await expect(page.locator("#messages-chart rect.bar")).to_have_count(4)
        await page.screenshot(path=str(ARTIFACTS / "analytics.png"), full_page=True)
        assert watched.problems == []
    finally:
        await context.close()


async def test_a_user_is_refused_and_a_visitor_asked_to_log_in(server: ApiServer, browser: Browser) -> None:
    base = server.client.base
    user = await server.client.register_and_login()
    context = await browser.new_context()
    try:
        watched = await opened(context, base)
        page = watched.page
        await log_in(page, base, user["email"])
        await expect(page.locator("#me-name")).to_have_text("Tester")
        await expect(page.locator("#analytics-link")).to_be_hidden()
        await page.goto(base + "/admin/analytics")  # the same tab: the session is in its sessionStorage
        await expect(page.locator("#analytics-error")).to_have_text("Not allowed: platform admins only.",
                                                                    timeout=15_000)
        await expect(page.locator("#figures")).to_be_hidden()
        # The page shows the refusal on the first 403 of its five parallel requests: wait for the others' answers.
        for _ in range(100):
            if len(watched.problems) >= 5:
                break
            await asyncio.sleep(0.05)
        assert sorted(watched.problems) == sorted(f"403 /api/v1/admin/analytics/{route}" for route in (
            "messages", "listening", "active-users", "peaks", "top-tracks")), watched.problems
    finally:
        await context.close()

    context = await browser.new_context()
    try:
        watched = await opened(context, base)
        await watched.page.goto(base + "/admin/analytics")
        await expect(watched.page.locator("#analytics-status")).to_have_text(
            "Log in first: open Veza, then come back.")
        assert watched.problems == []
    finally:
        await context.close()
