"""``companion run``: the daemon in the foreground, with systemd's notify protocol, SIGHUP reload and SIGTERM stop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from companion.commands.common import EXIT_CONFIG, EXIT_FAIL, EXIT_OK
from companion.config import Config, config_from_args
from companion.errors import CompanionError, ConfigError
from companion.tuning import RELEASE_EVERY, lean_tls_buffers, pure_python_frozenlist, release_free_memory

if TYPE_CHECKING:
    from companion.bridge import Bridge

log = logging.getLogger(__name__)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM or SIGINT; 0 after a clean stop, 78 on a configuration error."""
    config = config_from_args(args)
    pure_python_frozenlist()  # before the bridge (and aiohttp) is imported
    return asyncio.run(_run(config, args))


def status_line(bridge: Bridge) -> str:
    """One line for systemd's STATUS= and the logs: faces, availability, flings."""
    faces = len(bridge.faces)
    down = sum(1 for slot in bridge.faces.values() if not slot.adapter.available)
    flings = list(bridge.flings.recent) if bridge.flings is not None else []
    insecure = sum(1 for f in flings if not f.decision.secure)
    return (f"{faces} face(s)" + (f", {down} unavailable" if down else "")
            + f"; {len(flings)} fling(s) since start, {insecure} not secure")


async def _run(config: Config, args: argparse.Namespace) -> int:
    # Imported here, after cmd_run's process settings: the bridge brings aiohttp (and frozenlist).
    from companion.bridge import Bridge
    from companion.connections import quiet_loop_errors
    from companion.sdnotify import Notifier

    loop = asyncio.get_running_loop()
    quiet_loop_errors(loop)
    lean_tls_buffers()
    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    notifier = Notifier()
    bridge = Bridge(config)
    try:
        await bridge.start()
    except CompanionError as exc:
        log.error("cannot start: %s", exc)
        notifier.close()
        return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAIL
    except OSError as exc:
        log.error("cannot start: %s", exc)
        notifier.close()
        return EXIT_FAIL
    notifier.ready()  # every listener is up
    notifier.status(status_line(bridge))

    async def watchdog() -> None:
        period = notifier.ping_period() or 10.0
        while True:
            notifier.watchdog()  # sent from the event loop: a stuck loop stops the pings
            notifier.status(status_line(bridge))
            await asyncio.sleep(period)

    async def reloader() -> None:
        while True:
            await reload_requested.wait()
            reload_requested.clear()
            notifier.reloading()
            path = getattr(args, "config", None) or os.environ.get("COMPANION_CONFIG")
            try:
                new = config_from_args(args) if path else config
                await bridge.reload(new)
            except CompanionError as exc:
                log.error("reload failed, keeping the running configuration: %s", exc)
            notifier.ready()

    async def release_memory() -> None:
        while True:
            if not release_free_memory():
                return  # not glibc: nothing to do
            await asyncio.sleep(RELEASE_EVERY)  # housekeeping pace, not synchronisation

    tasks = [asyncio.create_task(watchdog(), name="sd-watchdog"),
             asyncio.create_task(release_memory(), name="release-memory"),
             asyncio.create_task(reloader(), name="sighup-reload")]
    try:
        await stop.wait()
        log.info("stopping")
        notifier.stopping()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bridge.stop()
        notifier.close()
    return EXIT_OK


__all__ = ["cmd_run", "status_line"]
