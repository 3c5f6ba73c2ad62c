"""The pages in a real browser: Debian's Chromium driven by Playwright against a live server.

Each role logs in and opens every page it may see: no console errors, every chart drawn with
data, filters change the URL and the numbers, the fleet table refreshes in place. Screenshots
go to tests/browser/screenshots/ (git-ignored).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.urls import reverse

from tests.conftest import PASSWORD, require_tool
from tests.dashboard.factories import dash_data_build

pytestmark = [pytest.mark.browser]

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
VIEWPORT = {"width": 1366, "height": 860}  # a common laptop screen


@pytest.fixture(scope="module")
def browser():
    chromium = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; Django refuses database calls
    # from a thread with a running loop unless told they are safe (they are: the loop is idle).
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        # Debian's Chromium, never a downloaded one (no `playwright install`).
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or chromium, args=["--no-sandbox"]
        )
        yield browser
        browser.close()
    monkeypatch.undo()


@pytest.fixture
def site(transactional_db, live_server, personas):
    data = dash_data_build(personas, hours=7 * 24, varied=True)
    SCREENSHOTS.mkdir(exist_ok=True)
    return live_server.url, data, personas


class Page:
    """A browser tab logged in as one role, recording console errors.

    Roles share one browser context (so plotly.js, served with a year-long cache lifetime, is
    fetched once); switching role swaps the session cookie. ``form_login`` logs in through
    the login page instead, as a person would.
    """

    def __init__(self, context, base_url: str, role: str, *, form_login: bool = False):
        self.base_url = base_url
        self.role = role
        self.context = context
        context.clear_cookies()
        if not form_login:
            from django.contrib.auth import get_user_model
            from django.test import Client

            client = Client()
            client.force_login(get_user_model().objects.get(username=role))
            cookie = client.cookies["sessionid"]
            context.add_cookies([{"name": "sessionid", "value": cookie.value, "url": base_url}])
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        if form_login:
            self.page.goto(base_url + reverse("login"))
            self.page.fill("input[name=username]", role)
            self.page.fill("input[name=password]", PASSWORD)
            self.page.click("button[type=submit]")
            self.page.wait_for_url(base_url + reverse("home") + "*")

    def open(self, path: str, *, shot: str | None = None, status: int = 200):
        response = self.page.goto(self.base_url + path)
        assert response is not None
        assert response.status == status, f"{self.role} {path}: {response.status}"
        if status == 200:
            self.charts_drawn()
        if shot:
            self.page.screenshot(path=str(SCREENSHOTS / f"{self.role}-{shot}.png"), full_page=True)
        return response

    def charts_drawn(self) -> None:
        """Every chart div has been drawn by Plotly with at least one trace with points."""
        count = self.page.locator("[data-chart]").count()
        if not count:
            return
        try:
            self.page.wait_for_function(
                "n => document.querySelectorAll('[data-chart][data-drawn=true]').length === n",
                arg=count,
                timeout=15000,
            )
        except Exception as exc:
            raise AssertionError(
                f"{self.page.url}: charts not drawn; errors: {self.errors}"
            ) from exc
        points = self.page.evaluate(
            """() => Array.from(document.querySelectorAll('[data-chart]')).map(el =>
                (el.data || []).map(t => (t.z || t.y || []).flat().filter(v => v !== null).length)
                    .reduce((a, b) => Math.max(a, b), 0))"""
        )
        assert points, "no chart found"
        assert all(p > 0 for p in points), f"{self.page.url}: a chart without data: {points}"

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport=VIEWPORT)
    yield context
    context.close()


def _pages_for(data) -> dict[str, str]:
    g0, _, _, g3, _ = data.gpus
    return {
        "overview": reverse("home"),
        "teams": reverse("teams"),
        "projects": reverse("projects"),
        "team-a": reverse("team", args=["team-a"]),
        "team-b": reverse("team", args=["team-b"]),
        "project-a1": reverse("project", args=["a1"]),
        "project-b1": reverse("project", args=["b1"]),
        "job-a1": reverse("job", args=[data.job_a1.pk]),
        "job-b1": reverse("job", args=[data.job_b1.pk]),
        "fleet": reverse("fleet"),
        "gpu-a1": reverse("gpu", args=[g0.uuid]),
        "gpu-b1": reverse("gpu", args=[g3.uuid]),
    }


LISTS = {"overview", "teams", "projects"}
VISIBLE = {
    "admin": set(),  # everything
    "finance": set(),
    "owner": LISTS | {"team-a", "project-a1", "job-a1", "gpu-a1"},
    "member": LISTS | {"team-a", "project-a1", "job-a1", "gpu-a1"},
    "manager": LISTS | {"team-a", "project-a1", "job-a1", "gpu-a1"},
    "outsider": LISTS | {"team-b", "project-b1", "job-b1", "gpu-b1"},
    "nobody": LISTS,
}


def test_every_role_opens_every_page_without_errors(context, site):
    base_url, data, _ = site
    pages = _pages_for(data)
    for role, visible in VISIBLE.items():
        tab = Page(context, base_url, role, form_login=role == "member")
        try:
            for name, path in pages.items():
                may = not visible or name in visible
                expected = 200 if may else (403 if name == "fleet" else 404)
                shot = name if may and role in ("admin", "member", "nobody") else None
                tab.open(path, shot=shot, status=expected)
            # A 403/404 page logs its status as a console error in Chromium; count only the rest.
            real = [e for e in tab.errors if "status of 40" not in e]
            assert real == [], f"{role}: {real}"
        finally:
            tab.close()


def test_filters_change_the_url_and_the_data(context, site):
    base_url, _, _ = site
    tab = Page(context, base_url, "admin")
    try:
        page = tab.page
        tab.open(reverse("teams"))
        week = page.locator("tr[data-team=team-a] td").nth(3).inner_text()
        page.click("a.seg-item:has-text('24 h')")
        page.wait_for_url("**/teams/?range=24h*")
        tab.charts_drawn()
        day = page.locator("tr[data-team=team-a] td").nth(3).inner_text()
        assert day != week
        assert "GPU-h" in day
        page.select_option("#filter-cluster", "west")
        page.click(".filters button[type=submit]")
        page.wait_for_url("**cluster=west*")
        assert "range=24h" in page.url
        assert page.locator("tr[data-team=team-a] td").nth(3).inner_text() == "0.0 GPU-h"
        assert page.locator("tr[data-team=team-b] td").nth(3).inner_text() != "0.0 GPU-h"
        # The cluster filter is kept in links: the team page opens with the same view.
        page.click("tr[data-team=team-b] a")
        page.wait_for_url("**/teams/team-b/?range=24h&cluster=west")
        tab.charts_drawn()
        # Changing the range redraws the overview chart with other data.
        tab.open(reverse("home") + "?range=24h")
        day_x = page.evaluate("document.getElementById('chart-capacity').data[0].x.length")
        tab.open(reverse("home") + "?range=7d")
        week_x = page.evaluate("document.getElementById('chart-capacity').data[0].x.length")
        assert day_x != week_x
        assert tab.errors == []
    finally:
        tab.close()


def test_fleet_refreshes_in_place(context, site):
    base_url, _, _ = site
    tab = Page(context, base_url, "admin")
    try:
        page = tab.page
        tab.open(reverse("fleet"), shot="fleet")
        page.evaluate("window.__marker = 'no full reload'")
        page.wait_for_selector("#fleet-state[data-refreshed]", timeout=15000)
        assert page.evaluate("window.__marker") == "no full reload"
        assert page.locator("tr[data-gpu]").count() == 5
        assert tab.errors == []
    finally:
        tab.close()
