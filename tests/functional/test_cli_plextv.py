"""`companion link` and `companion unlink` as a user runs them (subprocesses) against FakePlexTv:
the code and where to enter it, a progress line, the token stored 0600, the exit codes of success
and of each failure, and unlink deleting the bridge's devices then the token."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.plextv import FakePlexTv
from tests.helpers import free_port


@pytest.fixture
async def plextv() -> AsyncIterator[FakePlexTv]:
    async with FakePlexTv() as fake:
        yield fake


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f'plextv: {{url: "{url}"}}\nstate_dir: {tmp_path / "state"}\nmdns: {{enabled: false}}\n')
    return path


async def run(tmp_path: Path, fake: FakePlexTv | None, *args: str,
              enter: FakePlexTv | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "COMPANION_CONFIG": "", "CREDENTIALS_DIRECTORY": ""}
    if fake is not None:
        env["SSL_CERT_FILE"] = fake.write_ca(tmp_path / "plextv-ca.pem")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "companion", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env)
    assert proc.stderr is not None and proc.stdout is not None
    err_lines: list[str] = []
    async with asyncio.timeout(30):
        while line := (await proc.stderr.readline()).decode():
            err_lines.append(line)
            if enter is not None and "enter this code: " in line:
                enter.enter_code(line.split("enter this code: ")[1][:4])
        out = (await proc.stdout.read()).decode()
        code = await proc.wait()
    return code, out, "".join(err_lines)


async def test_link_then_unlink_as_a_user_runs_them(tmp_path: Path, plextv: FakePlexTv) -> None:
    config = write_config(tmp_path, plextv.url)
    code, out, err = await run(tmp_path, plextv, "--config", str(config), "link", "--timeout", "20", enter=plextv)
    assert code == 0, err
    assert f"Go to {plextv.url}/link and enter this code: " in err
    assert "linked to the Plex account 'Alice Example'" in out
    token_file = tmp_path / "state" / "plextv-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token not in out + err
    # A face the daemon registered earlier (the same way its registrar does), then unlink.
    face = plextv.issue_account_token("face-of-a-tv")
    device = plextv.device_by_client("face-of-a-tv")
    assert device is not None and face
    device.provides, device.connections = "client,player,pubsub-player", ["http://10.0.0.2:32500"]
    (tmp_path / "state" / "plextv-devices.json").write_text(
        f'{{"face-of-a-tv": {{"device_id": "{device.id}", "name": "TV (bridge)", "token": "{face}"}}}}')
    code, out, err = await run(tmp_path, plextv, "--config", str(config), "unlink")
    assert code == 0, err
    assert "1 device(s) deleted; token removed" in out
    assert plextv.players() == [] and not token_file.exists()
    code, out, err = await run(tmp_path, plextv, "--config", str(config), "unlink")
    assert code == 1 and "not linked to a Plex account" in err


async def test_link_failures_exit_1_with_the_reason(tmp_path: Path, plextv: FakePlexTv) -> None:
    config = write_config(tmp_path, plextv.url)
    plextv.use_cases.pin_expires_in = 1
    code, _out, err = await run(tmp_path, plextv, "--config", str(config), "link", "--timeout", "20")
    assert code == 1 and "expired before it was entered" in err and "waiting for the code" in err
    plextv.use_cases.pin_expires_in = 900
    plextv.use_cases.deny_pins = True
    code, _out, err = await run(tmp_path, plextv, "--config", str(config), "link")
    assert code == 1 and "plex.tv denied the link" in err
    closed = write_config(tmp_path, f"https://127.0.0.1:{free_port()}")
    code, _out, err = await run(tmp_path, plextv, "--config", str(closed), "link")
    assert code == 1 and "cannot reach plex.tv" in err and "internet access" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("plextv: {url: 'http://plex.tv'}\n")
    code, _out, err = await run(tmp_path, None, "--config", str(bad), "link")
    assert code == 78 and "plextv.url: expected https://host[:port]" in err
    assert not (tmp_path / "state" / "plextv-token").exists()


async def test_link_with_the_real_default_url_reaches_the_fake_through_a_private_hosts_file(tmp_path: Path) -> None:
    # The default plextv.url (https://plex.tv) itself, with no config: a private mount namespace
    # gets an /etc/hosts that names 127.0.0.1 plex.tv, and only that process trusts the fake's CA.
    async with FakePlexTv(port=443) as fake:
        hosts = tmp_path / "hosts"
        hosts.write_text("127.0.0.1 localhost\n127.0.0.1 plex.tv\n")
        state = tmp_path / "state"
        env = {**{k: v for k, v in os.environ.items() if k != "COMPANION_CONFIG"}, "CREDENTIALS_DIRECTORY": "",
               "STATE_DIRECTORY": str(state), "SSL_CERT_FILE": fake.write_ca(tmp_path / "ca.pem")}
        script = f'mount --bind "{hosts}" /etc/hosts && exec "{sys.executable}" -m companion link --timeout 20'
        proc = await asyncio.create_subprocess_exec(
            "unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        assert proc.stderr is not None and proc.stdout is not None
        err = ""
        async with asyncio.timeout(30):
            while line := (await proc.stderr.readline()).decode():
                err += line
                if "enter this code: " in line:
                    fake.enter_code(line.split("enter this code: ")[1][:4])
            out = (await proc.stdout.read()).decode()
            code = await proc.wait()
    assert code == 0, err
    assert "Go to https://plex.tv/link and enter this code: " in err
    assert "linked to the Plex account 'Alice Example'" in out
    assert (state / "plextv-token").read_text().strip() in fake.tokens()
    assert "127.0.0.1 plex.tv" not in Path("/etc/hosts").read_text(), "the real hosts file was not touched"
