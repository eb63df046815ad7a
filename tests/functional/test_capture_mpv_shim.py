"""``companion profiles capture`` against a real player: plex-mpv-shim (Python urllib for the Plex
API, libmpv with FFmpeg/GnuTLS for the media). The draft it writes must pass ``profiles lint``, and
what it says must match how the shim's two TLS stacks are set up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import time
import urllib.request
from pathlib import Path

import certifi
import yaml

from companion.lab.capture import Capture, CaptureTarget
from companion.lab.draft import build_draft, clients
from companion.lab.pki import LabPki
from companion.lab.server import ENDPOINTS
from companion.proto import plexdirect
from companion.security.profiles import lint, load_profiles
from tests.helpers import free_port, until

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]


class Shim:
    """plex-mpv-shim with a private config (conf.json + mpv.conf with vo/ao null), optionally in a
    private mount namespace where certifi's bundle also holds ``trust`` and /etc/hosts maps ``hosts``."""

    def __init__(self, workdir: Path, *, trust: bytes | None = None, hosts: dict[str, str] | None = None,
                 mpv: dict[str, str] | None = None) -> None:
        self.workdir, self.trust, self.hosts, self.mpv = workdir, trust, hosts or {}, mpv or {}
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    def _files(self) -> list[str]:
        conf = self.workdir / "config" / "plex-mpv-shim"
        conf.mkdir(parents=True)
        conf.joinpath("conf.json").write_text(json.dumps({
            "player_name": "Capture Shim", "client_uuid": "capture-shim-0001", "http_port": str(self.port),
            "allow_http": True, "enable_gui": False, "fullscreen": False, "enable_osc": False,
            "menu_mouse": False, "mpv_ext": False, "sanitize_output": True}))
        options = {"vo": "null", "ao": "null", "terminal": "no", "idle": "yes", **self.mpv}
        conf.joinpath("mpv.conf").write_text("".join(f"{k}={v}\n" for k, v in options.items()))
        mounts = []
        if self.hosts:
            hosts = self.workdir / "hosts"
            hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in self.hosts.items()))
            mounts.append(f"mount --bind {shlex.quote(str(hosts))} /etc/hosts")
        if self.trust:
            bundle = self.workdir / "bundle.pem"
            real = Path(certifi.where()).resolve()
            bundle.write_bytes(real.read_bytes() + b"\n" + self.trust)
            mounts.append(f"mount --bind {shlex.quote(str(bundle))} {shlex.quote(str(real))}")
        command = [sys.executable, "-m", "plex_mpv_shim.mpv_shim"]
        if mounts:  # a private mount namespace: the bind mounts exist for the shim only
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       " && ".join(mounts) + ' && exec "$@"', "shim", *command]
        return command

    async def __aenter__(self) -> Shim:
        command = self._files()
        env = {**os.environ, "XDG_CONFIG_HOME": str(self.workdir / "config"), "HOME": str(self.workdir),
               "PYTHONUNBUFFERED": "1"}
        log = (self.workdir / "shim.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(*command, env=env, stdout=log, stderr=log,
                                                         stdin=asyncio.subprocess.DEVNULL)
        log.close()

        async def answers() -> bool:
            try:
                await asyncio.to_thread(urllib.request.urlopen, f"http://{LOOPBACK}:{self.port}/resources", None, 2)
            except OSError:
                return False
            return True

        await until(answers, 30, message=f"plex-mpv-shim answering /resources; log:\n{self.log()}", interval=0.2)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)  # it stops its threads and libmpv in order
        try:
            async with asyncio.timeout(15):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def log(self) -> str:
        return (self.workdir / "shim.log").read_text(errors="replace")[-4000:]


async def test_capture_of_plex_mpv_shim_writes_a_measured_draft_that_lint_accepts(tmp_path: Path) -> None:
    """The user's path: the CLI against a player as found on the LAN (certifi's roots only, mpv's
    defaults). The plex.direct name does not resolve in the test's namespace, so the capture goes on
    with the IP; every chain is refused by the shim's API leg with unknown_ca, and no AIA fetch."""
    async with Shim(tmp_path / "shim") as shim:
        out = tmp_path / "plex-mpv-shim-measured.yaml"
        config = tmp_path / "config.yaml"
        config.write_text(f"http: {{bind: {LOOPBACK}, admin_port: 0}}\nlab: {{port: 0}}\n"
                          f"state_dir: {tmp_path / 'state'}\n")
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "companion", "--config", str(config), "profiles", "capture",
            f"{LOOPBACK}:{shim.port}", "--out", str(out), "--base", "plex-media-player", "--step-timeout", "20",
            "--json", cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await proc.communicate()
        took = time.monotonic() - started
        assert proc.returncode == 0, stderr.decode() + shim.log()
    progress = stderr.decode()
    assert "[1/5] RSA leaf + intermediate" in progress and "[5/5] TLS 1.3 only" in progress
    assert "could not resolve or reach that name" in progress
    assert "draft written to" in progress
    report = json.loads(stdout)
    assert report["lint_errors"] == []
    assert lint([out]) == []
    steps = {s["endpoint"]: s for s in report["steps"]}
    for name, step in steps.items():
        urllib_shakes = [h for h in step["handshakes"] if h["hello"]]
        assert urllib_shakes, name
        assert {(h["outcome"], h["alert"]) for h in urllib_shakes} == {("alert", "unknown_ca")}, name
        assert not step["played"] and not step["aia_fetches"], name
    draft = yaml.safe_load(out.read_text())
    base = load_profiles().get("plex-media-player")
    assert draft["id"] == "plex-mpv-shim-measured"
    assert draft["match"] == [{"product": "Plex MPV Shim"}] or draft["match"][0]["product"] == "Plex MPV Shim"
    assert draft["tls"]["follows_aia"] is False
    assert draft["tls"]["versions"] == {"min": "1.2", "max": "1.3"}  # Python 3.11's OpenSSL defaults
    assert draft["tls"]["roots"] == {"store": base.roots.store}
    measured = [e for e in draft["evidence"] if e["confidence"] == "measured"]
    assert measured and all(e["when"] and e["bridge_version"] for e in measured)
    assert any("is not fetched from the leaf's AIA" in e["claim"] for e in measured)
    assert any("alert unknown_ca" in e["claim"] for e in measured)
    assert any("cannot show which public roots" in e["claim"] for e in draft["evidence"])
    assert took < 120


async def test_capture_through_a_shim_that_trusts_the_lab_sees_both_tls_stacks_and_libmpv_play(
        tmp_path: Path) -> None:
    """With the lab root in the shim's certifi bundle (for this process only) and the plex.direct
    name in its /etc/hosts, the API leg (urllib/OpenSSL) completes, and libmpv (FFmpeg/GnuTLS, mpv's
    default tls-verify=no) fetches the stream: the lab records two TLS stacks and the tone plays."""
    pki = LabPki()
    name = plexdirect.build_name(LOOPBACK, pki.hash)
    async with Shim(tmp_path / "shim", trust=pki.roots_pem, hosts={name: LOOPBACK}) as shim:
        lines: list[str] = []
        capture = Capture(CaptureTarget(f"{LOOPBACK}:{shim.port}", LOOPBACK, shim.port),
                          bridge_address=LOOPBACK, lab_bind=LOOPBACK, listener_bind=LOOPBACK, pki=pki,
                          step_timeout=60, progress=lines.append)  # bounds; a step ends when it played
        result = await capture.run()
    steps = {s.endpoint.name: s for s in result.steps}
    assert all(s.host == name for s in result.steps)
    for played in ("rsa", "ecdsa", "tls12", "tls13"):
        assert steps[played].played, f"{played} did not play:\n" + "\n".join(lines) + "\n--- shim log:\n" + shim.log()
    stacks = {c.label: c for c in clients(result.steps)}
    assert set(stacks) == {"Python-urllib/3.11", "libmpv"}, list(stacks)
    urllib_hello, mpv_hello = stacks["Python-urllib/3.11"].hello, stacks["libmpv"].hello
    assert urllib_hello.fingerprint != mpv_hello.fingerprint
    assert urllib_hello.sni == mpv_hello.sni == name
    mpv = [h for s in result.steps for h in s.handshakes if h.user_agent == "libmpv"]
    assert {h.version for h in mpv if h.endpoint == "tls12"} == {"TLSv1.2"}
    assert {h.version for h in mpv if h.endpoint == "tls13"} == {"TLSv1.3"}
    assert all(any(p.endswith("/test.wav") for p in h.paths) for h in mpv)
    # The missing intermediate: urllib refuses with unknown_ca and fetches nothing, so mpv never starts.
    aia = steps["aia"]
    assert {(h.outcome, h.alert) for h in aia.handshakes} == {("alert", "unknown_ca")}
    assert not aia.aia_fetched and not aia.played
    draft_path = tmp_path / "capture-shim.yaml"
    draft_path.write_text(build_draft(result, load_profiles().get("default"), "capture-shim"))
    assert lint([draft_path]) == []
    draft = yaml.safe_load(draft_path.read_text())
    assert draft["media"]["https"] is True and draft["tls"]["sni"] is True and draft["tls"]["ecdsa"] is True
    assert any("libmpv" in e["claim"] and "does not verify" in e["claim"] for e in draft["evidence"])


async def test_libmpv_set_to_verify_is_recorded_completing_the_handshake_but_never_asking(tmp_path: Path) -> None:
    """mpv with tls-verify=yes and a CA file without the lab root (the API leg trusts the lab, so
    the media leg is reached): FFmpeg's GnuTLS backend checks the certificate after the handshake,
    so the lab sees libmpv's hello and a completed handshake that is closed without a request."""
    pki = LabPki()
    name = plexdirect.build_name(LOOPBACK, pki.hash)
    ca = tmp_path / "mpv-ca.pem"
    ca.write_bytes(Path(certifi.where()).read_bytes())
    async with Shim(tmp_path / "shim", trust=pki.roots_pem, hosts={name: LOOPBACK},
                    mpv={"tls-verify": "yes", "tls-ca-file": str(ca)}) as shim:
        capture = Capture(CaptureTarget(f"{LOOPBACK}:{shim.port}", LOOPBACK, shim.port),
                          bridge_address=LOOPBACK, lab_bind=LOOPBACK, listener_bind=LOOPBACK, pki=pki,
                          endpoints=ENDPOINTS[:1], step_timeout=60)
        result = await capture.run()
    (step,) = result.steps
    assert not step.played
    mpv = [h for h in step.handshakes if h.hello is not None and h.hello.fingerprint not in
           {x.hello.fingerprint for x in step.handshakes if x.user_agent.startswith("Python-urllib")}]
    assert mpv, [h.to_json() for h in step.handshakes]
    assert {(h.outcome, tuple(h.paths)) for h in mpv} == {("completed", ())}  # never asked for the stream
    assert mpv[0].hello is not None and mpv[0].hello.versions == ("1.3", "1.2", "1.1", "1.0")
    draft = build_draft(result, load_profiles().get("default"), "verifying-mpv")
    assert "closed without a request: it judges the certificate after the handshake" in draft
