"""`companion explain` per device against a server that sends leaf + YR1 only (what PMS does since
plex.direct moved to ISRG Root YR), with a generated hierarchy that mirrors Let's Encrypt's."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fakes.aia import make_aia_pki, write_gen_y_profiles
from tests.fakes.plex_server import FakePlexServer
from tests.lab import TOKEN, companion


async def _explain(config: Path, profile: str, port: int, *extra: str) -> tuple[int, str, str]:
    return await companion("--config", str(config), "explain", "--profile", profile, "--server",
                           f"https://127.0.0.1:{port}", *extra)


async def test_explain_says_per_device_who_needs_the_yr_by_x1_cross_sign(tmp_path: Path) -> None:
    pki = make_aia_pki("http://127.0.0.1:9/yr-by-x1.der")
    write_gen_y_profiles(tmp_path / "profiles", pki)
    config = tmp_path / "c.yaml"
    config.write_text(f"profiles_dirs: [{tmp_path / 'profiles'}]\nstate_dir: {tmp_path / 'state'}\n")
    async with FakePlexServer(token=TOKEN, chain=pki.chain) as server:  # sends leaf + YR1, no cross-sign
        stuck = await _explain(config, "tv-x1-only", server.port)
        fetches = await _explain(config, "tv-x1-aia", server.port)
        trusts_yr = await _explain(config, "tv-yr", server.port)
        as_json = await _explain(config, "tv-x1-only", server.port, "--json")

    code, out, err = stuck
    assert code == 1, err
    assert "FAIL  chain" in out
    assert "'Fake YR1' only" in out and "does not fetch missing issuers (AIA)" in out
    assert "verdict: relay (token kept off the LAN)" in out
    assert "  - cross-sign-missing: " in out
    assert "FAIL  test-yr" in out and "needs the 'Fake ISRG Root YR' cross-signed by 'Fake ISRG Root X1'" in out

    code, out, err = fetches
    assert code == 0, err
    assert "PASS  chain" in out and "cross-signed by Fake ISRG Root X1, fetched through AIA" in out
    assert "PASS  test-yr" in out and "fetches missing issuers (AIA)" in out
    assert "verdict: direct-secure" in out

    code, out, err = trusts_yr
    assert code == 0, err
    assert "PASS  test-yr" in out and "verifies chains to it directly" in out

    report = json.loads(as_json[1])
    [yr] = [r for r in report["cross_signed_roots"] if r["root"] == "test-yr"]
    assert yr == {**yr, "trusts_root": False, "trusts_cross_signer": True, "follows_aia": False, "ok": False,
                  "needs_cross_sign": True, "confidence": "assumed"}
    assert [r["code"] for r in report["decision"]["reasons"]] == ["cross-sign-missing", "relay-last-hop-plaintext"]


async def test_profiles_list_has_the_2026_roots_column_and_json() -> None:
    code, out, err = await companion("profiles", "list")
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "YR needs cross-sign" in rows["lg-webos-5"]
    assert "YR ok, YE ok" in rows["plex-web"]
    assert "YR no, YE no" in rows["lg-netcast"]
    code, out, err = await companion("profiles", "list", "--json")
    assert code == 0, err
    [webos5] = [p for p in json.loads(out) if p["id"] == "lg-webos-5"]
    [yr] = [r for r in webos5["cross_signed_roots"] if r["root"] == "isrg-root-yr"]
    assert (yr["trusts_root"], yr["trusts_cross_signer"], yr["follows_aia"], yr["needs_cross_sign"]) == (
        False, True, False, True)
    assert yr["confidence"] == "inferred"  # "ISRG Root YR missing on webOS 5 (reported, not confirmed)"
