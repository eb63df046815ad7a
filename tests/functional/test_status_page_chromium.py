"""The status page in a real headless Chromium: after a secure and an insecure fling, one green
closed lock and one open lock with its reason; a screenshot is kept under test-output/."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from tests.component.test_admin import OLD, SECURE, Rig, running
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plex_server import FakePlexServer

CHROMIUM = "/usr/bin/chromium"  # Debian's package; playwright drives it, it downloads no browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-output" / "status-page.png"


@pytest.fixture
async def server() -> AsyncIterator[FakePlexServer]:
    async with FakePlexServer(token="PAGE-TOKEN-9e8d7c") as fake:
        yield fake


@pytest.fixture
async def players() -> AsyncIterator[tuple[FakeCompanionPlayer, FakeCompanionPlayer]]:
    secure = FakeCompanionPlayer(name=SECURE, product="Lab TV")
    old = FakeCompanionPlayer(name=OLD, product="Lab TV")
    await secure.start()
    await old.start()
    yield secure, old
    await secure.stop()
    await old.stop()


async def test_status_page_in_chromium_shows_a_green_closed_lock_and_an_open_lock_with_the_reason(
        tmp_path: Path, server: FakePlexServer, players: tuple[FakeCompanionPlayer, FakeCompanionPlayer]):
    async with running(tmp_path, server, players) as rig:
        await rig.fling_via_face(SECURE)
        await rig.fling_via_face(OLD)
        await rig.admin.run_doctor()
        await look_at_the_page(rig)


async def look_at_the_page(rig: Rig) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900}, java_script_enabled=False)
            response = await page.goto(rig.base + "/")
            assert response is not None and response.status == 200

            closed = page.locator('[data-lock="closed"]')
            opened = page.locator('[data-lock="open"]')
            assert await closed.count() == 1
            assert await opened.count() == 1
            secure_row = page.locator("tr", has=page.locator(".target-name", has_text=SECURE))
            old_row = page.locator("tr", has=page.locator(".target-name", has_text=OLD))
            assert await secure_row.locator('[data-lock="closed"]').count() == 1
            assert await old_row.locator('[data-lock="open"]').count() == 1

            # The closed lock is drawn green, the open one (token exposed) red: the colour a person sees.
            green = await closed.evaluate("el => getComputedStyle(el).color")
            red = await opened.evaluate("el => getComputedStyle(el).color")
            assert green == "rgb(26, 127, 55)"
            assert red == "rgb(207, 34, 46)"
            assert await closed.locator("svg").bounding_box() is not None, "the lock icon is rendered"

            reasons = await old_row.locator(".reason-text").all_inner_texts()
            assert any("root store lacks" in text or "root" in text.lower() for text in reasons), reasons
            assert "root-missing" in await old_row.inner_text()
            assert "assumed" in await secure_row.inner_text()
            assert await page.locator('[data-fling-flag="insecure"]').count() == 1
            assert await page.locator('[data-check-status="PASS"]').count() >= 2

            # Where each face is visible, with the fix where it is not.
            visible = secure_row.locator("ul.visible")
            assert await visible.locator('[data-channel="gdm"][data-visible-state="visible"]').count() == 1
            plextv = visible.locator('[data-channel="plextv"][data-visible-state="missing"]')
            assert "companion link" in await plextv.inner_text()
            # Every finding shows its age.
            ages = await page.locator("#doctor td.age").all_inner_texts()
            assert ages and all(a.endswith("ago") for a in ages), ages

            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            await browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
