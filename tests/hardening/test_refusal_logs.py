"""Issue 12 row 12: each refused request (401 from the admin API, 421 for a foreign Host, a bad
timeline, a bad subscribe) logged one WARNING line, unthrottled: a LAN host could fill the journal.
Now each kind of refusal logs at most one line a minute, and the next line says how many more were
refused meanwhile; the owner's own requests and a real phone are still served."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.controller import FakeController
from tests.hardening.on_lan import attack, scene
from tests.helpers import until

FLOOD = 300


async def test_floods_of_refused_requests_log_a_few_lines_with_counts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with scene(tmp_path, admin=True) as s:
        assert s.bridge.admin is not None and s.bridge._listener is not None
        caplog.set_level(logging.INFO, logger="companion")
        caplog.clear()
        admin_url = f"http://{s.me}:{s.bridge.admin.port}"
        face_url = f"http://{s.me}:{s.tv_face_port()}"
        got = {kind: await attack(s.attacker, "refused", "--to", url, "--count", str(FLOOD), "--kind", kind)
               for kind, url in (("401", admin_url), ("421", face_url), ("400", face_url))}
        assert got["401"]["statuses"] == {"401": FLOOD}
        assert got["421"]["statuses"] == {"421": FLOOD}
        assert got["400"]["statuses"] == {"400": FLOOD}
        # Bad timelines pushed for the real TV (from its own address: only the body is wrong).
        listener = f"http://127.0.0.1:{s.bridge._listener.port}/:/timeline"
        async with aiohttp.ClientSession() as http:
            for _ in range(FLOOD):
                async with http.post(listener, data=b"<MediaContainer><Timeline state=",
                                     headers={"X-Plex-Client-Identifier": s.player.ident}) as resp:
                    await resp.read()

        lines = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("companion")]
        print(f"\nrow 12: {4 * FLOOD} refused requests (401, 421, bad subscribe, bad timeline) -> "
              f"{len(lines)} log line(s):")
        for record in lines:
            print("   ", record.levelname, record.name, record.getMessage()[:200])
        for needle in ("Authorization header", "Host 'evil.example'", "-> 400", "timeline from Real TV ignored"):
            matching = [r for r in lines if needle in r.getMessage()]
            assert 1 <= len(matching) <= 2, f"{needle!r}: {len(matching)} lines for {FLOOD} refusals"
        assert len(lines) <= 12

        # The owner and a real phone are still served.
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{s.bridge.admin.port}/api/health") as resp:
            assert resp.status == 200
        async with FakeController(client_id="real-phone") as phone:
            reply = await phone.request(f"http://127.0.0.1:{s.tv_face_port()}", "/player/playback/pause")
            assert reply.status == 200
        await until(lambda: bool(s.player.received("pause")), timeout=5, message="the real TV paused")
