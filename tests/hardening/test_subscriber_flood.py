"""Issue 12 row 11: 100 timeline subscribes with distinct client ids from one host filled a face's 64
subscriber slots, and every real phone got 503 after. Now subscribers are capped per source
address, and a full face makes the address holding the most give way: a real phone subscribes and
gets its pushes whatever the attacker does."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.controller import FakeController
from tests.hardening.on_lan import attack, scene
from tests.helpers import until


async def test_a_subscribe_flood_takes_only_its_own_share_and_a_real_phone_still_subscribes(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        per_source = s.bridge.config.limits.subscribers_per_source
        face_url = f"http://{s.me}:{s.tv_face_port()}"
        slot = next(iter(s.bridge.faces.values()))

        one = await attack(s.attacker, "subscribe", "--to", face_url, "--count", "100")
        assert one["statuses"] == {"200": per_source, "503": 100 - per_source}, one
        assert slot.face.subscriber_count == per_source
        print(f"\nrow 11: 100 subscribes from one address: {one['statuses']}")

        # Eight more addresses, ten subscribes each: the face's 64 slots fill up.
        extra = [f"{s.lan.subnet}.{n}" for n in range(100, 108)]
        for address in extra:
            s.attacker.add_address(address)
        many = await attack(s.attacker, "subscribe", "--to", face_url, "--count", "10", "--sources", ",".join(extra))
        assert slot.face.subscriber_count == 64, many
        print(f"row 11: 10 subscribes from each of 8 more addresses: {many['statuses']}, face holds 64")

        # The real phone (another address) subscribes, and its pushes come.
        async with FakeController(client_id="real-phone", name="Real Phone") as phone:
            base = f"http://127.0.0.1:{s.tv_face_port()}"
            reply = await phone.subscribe(base)
            assert reply.status == 200, reply.body
            await phone.wait_for(lambda push: True, timeout=5)
            assert slot.face.subscribers.subscribed("real-phone")
            assert slot.face.subscriber_count == 64, "an attacker's subscriber gave way, none was added"
            reply = await phone.request(base, "/player/playback/pause")
            assert reply.status == 200
            await until(lambda: bool(s.player.received("pause")), timeout=5, message="the real TV paused")
