"""Row 6 with a real browser: Chromium, started inside the attacker's network namespace, opens a web page
from the attacker's host. The page's cross-site requests to the owner's TV face (a no-cors text/plain
POST, a GET, an <img>) reach the face and are refused; a page of an origin the owner allowed in
http.cors_origins commands the TV and reads the answer."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

from tests.hardening.hostile_lan import TV, Lab, lan_lab
from tests.helpers import until

CHROMIUM = "/usr/bin/chromium"  # Debian's package; playwright drives it, it downloads no browser
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
EVIL_PORT, ALLOWED_PORT = 8080, 8081

EVIL = """<!doctype html><title>cute cats</title>
<img src="{face}/player/playback/stop?commandID=1">
<script>
  const face = "{face}";
  fetch(face + "/player/playback/pause", {{method: "POST", mode: "no-cors",
        headers: {{"Content-Type": "text/plain"}}, body: "x"}}).catch(() => {{}});
  fetch(face + "/player/playback/playMedia?key=%2Flibrary%2Fmetadata%2F777&commandID=2",
        {{mode: "no-cors"}}).catch(() => {{}});
  fetch(face + "/player/playback/play?commandID=3").then(r => document.title = "read " + r.status,
        () => document.title = "not read");
</script>"""
ALLOWED = """<!doctype html><title>remote</title>
<script>
  fetch("{face}/player/playback/pause?commandID=4").then(r => r.text()).then(
        t => document.title = "paused: " + t.length, e => document.title = "error " + e);
</script>"""


def chromium_in(lab: Lab, tmp_path: Path) -> str:
    """A launcher that runs Chromium inside the attacker's namespace (playwright keeps its pipes)."""
    wrapper = tmp_path / "chromium-on-attacker"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {lab.attacker.ns} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


async def settled(page: Page, first_title: str) -> bool:
    """The page's script has replaced the title it was served with (its fetch answered or failed)."""
    return await page.title() != first_title


async def serve(lab: Lab, tmp_path: Path, name: str, port: int, html: str) -> None:
    page = tmp_path / f"{name}.html"
    page.write_text(html)
    proc = await lab.attacker.spawn(*lab.attacker.python(
        "-m", "tests.hardening.lan_attacker", "page", f"--bind={lab.attacker.address}:{port}", f"--html={page}"))
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        assert b"listening" in await proc.stdout.readline()


async def test_row6_a_real_browsers_cross_site_requests_are_refused_and_an_allowed_origin_works(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="companion.faces.middleware")
    allowed = f"http://{{attacker}}:{ALLOWED_PORT}"  # say, a self-hosted Plex Web the owner listed
    async with lan_lab(tmp_path, cors_origins=("https://app.plex.tv", allowed)) as lab:
        face = f"http://{lab.me}:{lab.face_port(TV)}"
        await serve(lab, tmp_path, "evil", EVIL_PORT, EVIL.format(face=face))
        await serve(lab, tmp_path, "allowed", ALLOWED_PORT, ALLOWED.format(face=face))

        def refusals() -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith("refused") and f"from {lab.attacker.address}" in r.getMessage()]

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium_in(lab, tmp_path), args=ARGS)
            try:
                evil = await browser.new_page()
                await evil.goto(f"http://{lab.attacker.address}:{EVIL_PORT}/")
                await until(lambda: len(refusals()) >= 4, timeout=20,
                            message="the page's four requests reached the face and were refused")
                await until(lambda: settled(evil, "cute cats"), timeout=10,
                            message="the page's readable fetch settled")
                assert await evil.title() == "not read"

                page = await browser.new_page()
                await page.goto(f"http://{lab.attacker.address}:{ALLOWED_PORT}/")
                await until(lambda: settled(page, "remote"), timeout=20,
                            message="the allowed page's fetch settled")
                title = await page.title()
            finally:
                await browser.close()
        seen = "\n".join(refusals())
        for path in ("POST /player/playback/pause", "GET /player/playback/playMedia",
                     "GET /player/playback/stop", "GET /player/playback/play"):
            assert path in seen, f"{path} was refused:\n{seen}"
        assert f"http://{lab.attacker.address}:{EVIL_PORT}" in seen, "refused for its Origin"
        assert title.startswith("paused: "), title
        assert [c.name for c in lab.player.state.commands if c.path.startswith("/player/playback")] == ["pause"]
