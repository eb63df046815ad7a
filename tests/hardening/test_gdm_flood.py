"""Issue 12 row 4: 300 GDM HELLOs with distinct identifiers from a host on the LAN made 300 faces and
300 listening ports, kept in faces.json across restarts, and one 23-byte M-SEARCH then drew 302
replies (94 KB). Now discovered targets are capped (in all and per address), expired ones leave
faces.json, the replies to one search are capped and searches are answered per source at a rate;
the real TV's face is still found and commanded by a real controller during and after the attack."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from plexapi.client import PlexClient

from tests.fakes.gdm_peer import FakeGdmPeer
from tests.hardening.on_lan import attack, scene
from tests.helpers import until

LIMITS = "limits: {discovered_targets: 8, targets_per_address: 4}"


async def test_a_hello_flood_is_capped_forgotten_on_expiry_and_cannot_aim_a_reply_flood(tmp_path: Path) -> None:
    async with scene(tmp_path, LIMITS, timeouts={"target_expiry": 12.0}) as s:
        bridge, attacker = s.bridge, s.attacker
        gdm = bridge.config.gdm
        # Three addresses on the attacker's interface, 100 HELLOs from each.
        extra = [f"{s.lan.subnet}.{n}" for n in (100, 101)]
        for address in extra:
            attacker.add_address(address)
        sent = await attack(attacker, "hello", "--to", f"{s.me}:{gdm.announce_port}", "--count", "100",
                            "--sources", ",".join([attacker.address, *extra]))
        assert sent["sent"] == 300
        await until(lambda: s.discovered_faces() == 8, timeout=20,
                    message=f"8 discovered faces (now {s.discovered_faces()}, {bridge.registry.refused} refused)")
        by_address = {slot.target.address for slot in bridge.faces.values() if slot.target.source != "config"}
        assert len(by_address) == 2, "4 per address: the first two addresses fill the cap of 8"
        assert len(bridge.faces) == 9, "the TV's face and 8 discovered ones: 9 listening ports, not 301"
        stored = json.loads((bridge.state.path / "faces.json").read_text())
        assert len(stored) == 9
        # A face answers searches only once announced (after the bridge's first listen on the LAN).
        await until(lambda: sum(slot.announced for slot in bridge.faces.values()) == 9, timeout=10,
                    message="all 9 faces announced on GDM")

        # One M-SEARCH from the attacker: one reply per face, within limits.gdm_replies_per_search.
        one = await attack(attacker, "search", "--to", f"{s.me}:{gdm.player_port}", "--window", "2")
        assert one["replies"] == 9 <= bridge.config.limits.gdm_replies_per_search
        print(f"\nrow 4: one M-SEARCH ({one['request_bytes']} B) after 300 HELLOs drew {one['replies']} "
              f"replies, {one['bytes']} B (x{one['bytes'] / one['request_bytes']:.0f})")
        # A burst of 50 searches from one (spoofable) address: only the bucket's burst is answered.
        burst = await attack(attacker, "search", "--to", f"{s.me}:{gdm.player_port}", "--count", "50",
                             "--window", "2")
        answered = burst["replies"] // 9
        assert answered <= bridge.config.limits.gdm_search_burst, burst
        print(f"row 4: 50 M-SEARCHes in a burst drew {burst['replies']} replies, {burst['bytes']} B "
              f"({answered} searches answered)")

        # Meanwhile the phone (another address) finds the real TV's face and commands it.
        phone = FakeGdmPeer("controller")
        replies = await phone.search_replies(("127.0.0.1", gdm.player_port), timeout=3, expect=9)
        names = {got.message.get("Name") for got in replies if got.message is not None}
        assert "Real TV (bridge)" in names, names
        client = await asyncio.to_thread(PlexClient, baseurl=f"http://127.0.0.1:{s.tv_face_port()}", timeout=10)
        try:
            await asyncio.to_thread(client.pause)
        finally:
            client._session.close()
        await until(lambda: bool(s.player.received("pause")), timeout=5, message="the real TV paused")

        # The attacker falls silent: its targets expire, their faces close and leave faces.json.
        await until(lambda: s.discovered_faces() == 0, timeout=30, message="the discovered faces expired")
        await until(lambda: len(json.loads((bridge.state.path / "faces.json").read_text())) == 1, timeout=5,
                    message="faces.json holds the configured TV's port only")
        stored = json.loads((bridge.state.path / "faces.json").read_text())
        assert list(stored.values()) == [s.tv_face_port()], "a configured target's port stays"
