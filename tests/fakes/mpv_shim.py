"""MpvShim: the real plex-mpv-shim (a Companion player on libmpv) as a headless test peer.

Not a fake: this starts the PyPI ``plex-mpv-shim`` (1.11) in a subprocess with its own config in a
temporary directory, so the suite meets an implementation it did not write. What the shim does,
read from its source (``plex_mpv_shim/``):

* it reads ``$XDG_CONFIG_HOME/plex-mpv-shim/conf.json`` (``conffile.py``, ``conf.py``) and hands
  ``mpv.conf`` beside it to libmpv as ``include`` (``player.py``);
* it serves Companion HTTP on ``http_port`` on every address (``client.py``) and answers GDM on
  UDP 32412 of group 239.0.0.250 (``gdm.py``: fixed port, so run it inside a private namespace);
* its API requests (metadata, play queue, transcode decision, the server root ``/`` for the
  machineIdentifier, ``/:/timeline``, scrobble) go through ``urllib`` with
  ``cafile=certifi.where()``: it verifies https against certifi's bundle, nothing else;
* libmpv (FFmpeg with GnuTLS on Debian) fetches the media; mpv's ``tls-verify`` defaults to
  ``no``, so the media leg is unverified unless ``mpv.conf`` says otherwise;
* SIGINT ends it in order (``mpv_shim.py`` catches KeyboardInterrupt, stops its threads, sends
  GDM BYE).

Usage::

    async with MpvShim(tmp_path / "shim", name="Shim TV") as shim:
        shim.port, shim.ident, shim.base_url        # Companion HTTP, its Resource-Identifier
        ...
        shim.log_text()                               # its whole log, for failure messages

``trust_pem`` makes both the API leg and the media leg trust one more root, for this process only:
the shim then runs in a private mount namespace (``unshare -m``) where certifi's bundle is replaced
by certifi + that root, and ``mpv.conf`` gets ``tls-verify=yes`` with a CA file of certifi + that
root. ``hosts`` maps names to addresses through a private ``/etc/hosts`` in the same namespace (how
the test lets it resolve a plex.direct name). ``prefix`` is put before the command, to run it in
another network namespace; ``connect_host`` is then the address the test reaches it on. On a
tests/netlab.py LAN::

    shim = MpvShim(tmp_path / "shim", prefix=lan["player"].cmd(), connect_host=lan["player"].address)

``stop()`` sends SIGINT and waits; ``killed`` says whether it had to be killed instead (a test of
clean shutdown asserts it is False), ``returncode`` is its exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import certifi

STOP_WAIT = 10.0  # SIGINT -> exit: joins of its 1 s / 0.5 s polling threads, then libmpv's stop
START_WAIT = 30.0  # importing libmpv and binding ports on a loaded 2-core machine
APP = "plex-mpv-shim"
_MAIN = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from plex_mpv_shim.mpv_shim import main; main()")


def _certifi_real_path() -> Path:
    # .venv may be a symlink: a bind mount must name the file the interpreter really opens.
    return Path(certifi.where()).resolve()


class MpvShimError(AssertionError):
    """The shim did not come up, or did not go down, within its bound; the message carries its log."""


class MpvShim:
    """One plex-mpv-shim process with a private config directory."""

    def __init__(self, workdir: Path, *, name: str = "MPV Shim", port: int = 32433,
                 ident: str | None = None, trust_pem: bytes | None = None,
                 hosts: Mapping[str, str] | None = None, prefix: Sequence[str] = (),
                 connect_host: str = "127.0.0.1", settings: Mapping[str, Any] | None = None,
                 mpv_options: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.name = name
        self.port = port
        self.ident = ident or str(uuid.uuid4())
        self.connect_host = connect_host
        self._trust_pem = trust_pem
        self._hosts = dict(hosts or {})
        self._prefix = list(prefix)
        self._settings = dict(settings or {})
        self._mpv_options = dict(mpv_options or {})
        self._proc: asyncio.subprocess.Process | None = None
        self.log_path = workdir / "shim.log"
        self.returncode: int | None = None
        self.killed = False

    # -- files --------------------------------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        return self.workdir / "config" / APP

    def _conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "player_name": self.name,
            "client_uuid": self.ident,
            "http_port": str(self.port),
            "allow_http": True,  # without it get_plex_url refuses http servers (and the relay)
            "enable_gui": False,  # no systray/tkinter: the CLI user interface
            "fullscreen": False,
            "enable_osc": False,
            "menu_mouse": False,  # no mouse.lua script
            "mpv_ext": False,  # libmpv in-process, not an external mpv over IPC
            "auto_play": False,
            "skip_intro_prompt": False,
            "skip_intro_always": False,
            "shader_pack_enable": False,
            "svp_enable": False,
            "sanitize_output": True,  # its log redacts tokens; tests read the log
            "log_decisions": True,  # the URL handed to mpv, in the log (token redacted)
            "mpv_log_level": "info",
            "idle_cmd": None, "stop_cmd": None, "pre_media_cmd": None, "media_ended_cmd": None,
        }
        conf.update(self._settings)
        return conf

    def _mpv_conf(self) -> str:
        options = {"vo": "null", "ao": "null", "audio-display": "no", "terminal": "no",
                   "input-default-bindings": "no", "osc": "no", "idle": "yes"}
        if self._trust_pem is not None:
            options["tls-verify"] = "yes"
            options["tls-ca-file"] = str(self.workdir / "trust" / "mpv-ca.pem")
        options.update(self._mpv_options)
        return "".join(f"{key}={value}\n" for key, value in options.items())

    def _write_files(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "home").mkdir(exist_ok=True)
        (self.config_dir / "conf.json").write_text(json.dumps(self._conf(), indent=2))
        (self.config_dir / "mpv.conf").write_text(self._mpv_conf())
        (self.config_dir / "input.conf").write_text("")
        if self._trust_pem is not None:
            trust = self.workdir / "trust"
            trust.mkdir(exist_ok=True)
            bundle = _certifi_real_path().read_bytes() + b"\n" + self._trust_pem
            (trust / "certifi-plus-test.pem").write_bytes(bundle)
            (trust / "mpv-ca.pem").write_bytes(bundle)
        if self._hosts:
            lines = ["127.0.0.1 localhost", "::1 localhost"]
            lines += [f"{address} {name}" for name, address in self._hosts.items()]
            (self.workdir / "hosts").write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        """The full command line (with the namespace wrapper when trust or hosts are set)."""
        # Its clean shutdown is its KeyboardInterrupt handler; Python installs that only when SIGINT
        # is not ignored at start, and a shell starting the suite in the background ignores it.
        shim = [sys.executable, "-c", _MAIN]
        mounts: list[str] = []
        if self._hosts:
            mounts.append(f"mount --bind {shlex.quote(str(self.workdir / 'hosts'))} /etc/hosts")
        if self._trust_pem is not None:
            bundle = self.workdir / "trust" / "certifi-plus-test.pem"
            mounts.append(f"mount --bind {shlex.quote(str(bundle))} {shlex.quote(str(_certifi_real_path()))}")
        if mounts:
            # A private mount namespace: the bind mounts exist for this process tree only.
            script = " && ".join(mounts) + ' && exec "$@"'
            shim = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "mpv-shim", *shim]
        return [*self._prefix, *shim]

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.connect_host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def start(self, timeout: float = START_WAIT) -> None:
        """Start it and wait (bounded) until its Companion HTTP answers /resources with its id."""
        self._write_files()
        env = {
            **os.environ,
            "HOME": str(self.workdir / "home"),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
            "XDG_CACHE_HOME": str(self.workdir / "cache"),
            "XDG_STATE_HOME": str(self.workdir / "state"),
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "DISPLAY", "WAYLAND_DISPLAY"):
            env.pop(name, None)
        if self._trust_pem is not None:
            # requests (timeline pushes, PUT /library/parts) honours these; urllib uses certifi.
            env["REQUESTS_CA_BUNDLE"] = str(self.workdir / "trust" / "certifi-plus-test.pem")
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(), cwd=self.workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        try:
            await self._until_ready(timeout)
        except BaseException:
            await self.stop()
            raise

    async def _until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = f'machineIdentifier="{self.ident}"'.encode()
        async with aiohttp.ClientSession() as http:
            while True:
                if not self.running:
                    raise MpvShimError(f"plex-mpv-shim exited ({self._proc.returncode if self._proc else '?'}) "
                                       f"before answering; its log:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with http.get(self.base_url + "/resources",
                                        timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                        if resp.status == 200 and want in await resp.read():
                            return
                if time.monotonic() > deadline:
                    raise MpvShimError(f"plex-mpv-shim did not answer {self.base_url}/resources within "
                                       f"{timeout:g} s; its log:\n{self.log_tail()}")
                await asyncio.sleep(0.1)  # poll pacing inside a bounded wait

    async def stop(self, timeout: float = STOP_WAIT) -> None:
        """SIGINT (its own clean shutdown), a bounded wait, then SIGKILL of its process group."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        self.returncode = proc.returncode

    async def __aenter__(self) -> MpvShim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
