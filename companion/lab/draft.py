"""A capture's observations -> a device profile draft with ``confidence: measured`` claims (pure).

What the lab can measure: the TLS versions, suites, groups and signature algorithms offered;
whether SNI is sent; whether an ECDSA chain gets as far as verification; whether the missing
intermediate is fetched from the AIA URL; whether the device verifies at all (it must reject the
lab's private root); whether the stream plays. What it cannot: which public roots the device
trusts, its smallest RSA key, SHA-1 tolerance and its resolver. Those are kept from the base
profile, and the draft says so.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from companion.lab.capture import CaptureResult, StepResult
from companion.lab.hello import ClientHelloFacts
from companion.lab.server import Handshake
from companion.security.profiles import Profile
from companion.security.terms import TLS_VERSIONS

SOURCE = "companion profiles capture"
# The alerts a client sends about a certificate it will not accept (RFC 8446 section 6.2): reaching
# one means the client got as far as judging our chain, so version, suite and key type were fine.
CERTIFICATE_ALERTS = frozenset({"unknown_ca", "bad_certificate", "certificate_unknown", "unsupported_certificate",
                                "certificate_expired", "certificate_revoked", "access_denied", "decrypt_error"})
_TLS13_SUITES = re.compile(r"^TLS_(AES|CHACHA20|SHA)")


@dataclass
class Client:
    """One TLS stack of the device (one ClientHello shape), with what it did."""

    hello: ClientHelloFacts
    agents: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    requested: int = 0  # completed handshakes that carried a request: the chain was accepted
    silent: int = 0  # completed handshakes closed without a request

    @property
    def label(self) -> str:
        """The client's name in a draft: its user agents, else its TLS fingerprint."""
        return ", ".join(self.agents) if self.agents else f"TLS stack {self.hello.fingerprint}"


def clients(steps: Iterable[StepResult]) -> list[Client]:
    """The device's TLS stacks, one per ClientHello fingerprint, in order of first appearance."""
    found: dict[str, Client] = {}
    for step in steps:
        for shake in step.handshakes:
            if shake.hello is None:
                continue
            client = found.setdefault(shake.hello.fingerprint, Client(shake.hello))
            if shake.user_agent and shake.user_agent not in client.agents:
                client.agents.append(shake.user_agent)
            client.outcomes.append(_ending(shake))
            if shake.outcome == "completed":
                if shake.paths:
                    client.requested += 1
                else:
                    client.silent += 1
    return list(found.values())


def _ending(shake: Handshake) -> str:
    if shake.outcome == "alert":
        return f"alert {shake.alert}"
    if shake.outcome == "refused":
        return f"refused ({shake.server_reason})"
    return shake.outcome


def _versions(hello: ClientHelloFacts) -> list[str]:
    return [v for v in TLS_VERSIONS if v in hello.versions]


def _reached_certificate(shakes: list[Handshake]) -> bool | None:
    """Did the handshakes get as far as our certificate? None when there were none."""
    ended = [s for s in shakes if s.done]
    if not ended:
        return None
    return any(s.outcome == "completed" or (s.outcome == "alert" and s.alert in CERTIFICATE_ALERTS) for s in ended)


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _step(result: CaptureResult, name: str) -> StepResult | None:
    return next((s for s in result.steps if s.endpoint.name == name), None)


def build_draft(result: CaptureResult, base: Profile, profile_id: str) -> str:
    """The profile draft's YAML text (``companion profiles lint`` accepts it)."""
    when = result.started.isoformat(timespec="seconds")
    claims: list[str] = []

    def measured(claim: str, *about: str) -> None:
        claims.append(f"  - {{claim: {_q(claim)}, source: {_q(SOURCE)}, confidence: measured, "
                      f"when: {_q(when)}, bridge_version: {_q(result.bridge_version)}{_about(about)}}}")

    found = clients(result.steps)
    tls = base.tls
    lo, hi = tls.min_version, tls.max_version
    ciphers: tuple[str, ...] | None = tls.ciphers
    sni, ecdsa, follows_aia, https = tls.sni, tls.ecdsa, tls.follows_aia, base.media_https
    kept = ["tls.rsa_min_bits", "tls.requires_sha2", "tls.roots", "dns.resolver", "media.http"]
    if found:
        ranges = [_versions(c.hello) for c in found]
        usable = [r for r in ranges if r]
        if usable:
            lo = max((r[0] for r in usable), key=TLS_VERSIONS.index)
            hi = min((r[-1] for r in usable), key=TLS_VERSIONS.index)
            if TLS_VERSIONS.index(lo) > TLS_VERSIONS.index(hi):
                lo, hi = hi, lo  # the stacks share no version; keep the span and let the claims say so
        for c in found:
            offered = ", ".join(c.hello.versions) or "none"
            measured(f"{c.label} offers TLS {offered}; {len(c.hello.cipher_suites)} cipher suites; groups "
                     f"{', '.join(c.hello.groups) or 'none'}; signature algorithms "
                     f"{', '.join(c.hello.signature_algorithms) or 'none'}; ALPN {', '.join(c.hello.alpn) or 'none'}; "
                     f"extensions {', '.join(c.hello.extensions) or 'none'} (fingerprint {c.hello.fingerprint})",
                     "tls.versions", "tls.ciphers")
            counts = Counter(c.outcomes)
            measured(f"{c.label}: handshakes with the lab's private chains ended: "
                     + ", ".join(f"{ending} x{n}" for ending, n in counts.items()))
        if TLS_VERSIONS.index(hi) <= TLS_VERSIONS.index("1.2"):
            common = [name for name in found[0].hello.openssl_ciphers if not _TLS13_SUITES.match(name)]
            for c in found[1:]:
                theirs = set(c.hello.openssl_ciphers)
                common = [n for n in common if n in theirs]
            ciphers = tuple(common) if common else ciphers
        else:
            ciphers = None  # TLS 1.3 needs no list: the device takes the server's TLS 1.3 suites
        named = [s for s in result.steps if not _is_ip(s.host)]
        hellos = [h.hello for s in named for h in s.handshakes if h.hello is not None]
        if hellos:
            sni = all(h.hello.sni == s.host for s in named for h in s.handshakes if h.hello is not None)
            measured(f"SNI {'sent' if sni else 'not sent'} for the name {named[0].host}", "tls.sni")
        else:
            kept.append("tls.sni")
    else:
        kept += ["tls.versions", "tls.ciphers", "tls.sni"]
    ecdsa_step = _step(result, "ecdsa")
    reached = _reached_certificate(ecdsa_step.handshakes) if ecdsa_step else None
    if reached is None:
        kept.append("tls.ecdsa")
    else:
        ecdsa = reached
        measured("an ECDSA chain " + ("gets as far as certificate verification" if reached else
                                      "ends the handshake before certificate verification"), "tls.ecdsa")
    aia_step = _step(result, "aia")
    if aia_step is None or not aia_step.handshakes:
        kept.append("tls.follows_aia")
    else:
        follows_aia = aia_step.aia_fetched
        measured("the missing intermediate " + ("is fetched from the leaf's AIA CA Issuers URL" if follows_aia
                                                 else "is not fetched from the leaf's AIA CA Issuers URL"),
                 "tls.follows_aia")
    for name, version in (("tls12", "1.2"), ("tls13", "1.3")):
        step = _step(result, name)
        if step is not None:
            got = _reached_certificate(step.handshakes)
            if got is not None:
                measured(f"a TLS {version}-only server " + ("gets as far as certificate verification" if got
                                                            else "is refused"), "tls.versions")
    # A request after the handshake means the chain was accepted. A client may also finish the
    # handshake and judge the certificate afterwards (FFmpeg's GnuTLS backend does), then hang up.
    for c in found:
        if c.requested:
            measured(f"{c.label} sent requests over the lab's private chains, which no device trusts: it does "
                     "not verify the server's certificate (or was made to trust the lab root)")
        elif c.silent:
            measured(f"{c.label} completed {c.silent} handshake(s) and closed without a request: it judges the "
                     "certificate after the handshake, so only its silence shows a refusal")
    if any(s.played for s in result.steps):
        https = True
        measured("plays the https test stream: " + ", ".join(s.endpoint.name for s in result.steps if s.played),
                 "media.https")
    else:
        kept.append("media.https")
    confidence = base.confidence
    source = f"profiles/devices/{base.id}.yaml"
    kept_claim = ("a private lab root cannot show which public roots this device trusts; "
                  f"{', '.join(kept)} are kept from the base profile {base.id}")
    claims.append(f"  - {{claim: {_q(kept_claim)}, "
                  + (f"source: {_q(source)}, " if confidence != "assumed" else "")
                  + f"confidence: {confidence}{_about(kept)}}}")
    # The base's own evidence for what is kept (its root claims above all) comes along unchanged.
    for e in base.evidence:
        if any(f in kept or f.startswith("roots.") for f in e.about):
            claims.append(f"  - {{claim: {_q(e.claim)}, " + (f"source: {_q(e.source)}, " if e.source else "")
                          + f"confidence: {e.confidence}"
                          + (f", when: {_q(e.when)}" if e.when else "")
                          + (f", bridge_version: {_q(e.bridge_version)}" if e.bridge_version else "")
                          + f"{_about(e.about)}}}")
    player = result.player
    product = player.get("product", "")
    match = (f"  - {{product: {_q(product)}"
             + (f", platform: {_q(player['platform'])}" if player.get("platform") else "") + "}"
             if product else f"  - {{name: {_q(result.target.name)}}}")
    title = " ".join(x for x in (product or result.target.name, player.get("version", "")) if x)
    lines = [
        f"# Draft written by `companion profiles capture` ({result.bridge_version}) on {when}, measuring",
        f"# {result.target.name} ({result.target.address}:{result.target.port}); base profile: {base.id}.",
        "# Review every value, then `companion profiles lint` this file (profiles/README.md).",
        f"id: {profile_id}",
        f"name: {_q(title + ' (measured)')}",
        "match:",
        match,
        f"transport: {base.transport}",
        f"media: {{https: {_b(https)}, http: {_b(base.media_http)}}}",
        "tls:",
        f"  versions: {{min: {_q(lo)}, max: {_q(hi)}}}",
    ]
    if ciphers:
        lines.append(f"  ciphers: [{', '.join(ciphers)}]")
    lines += [
        f"  sni: {_b(sni)}",
        f"  rsa_min_bits: {tls.rsa_min_bits}",
        f"  ecdsa: {_b(ecdsa)}",
        f"  requires_sha2: {_b(tls.requires_sha2)}",
        f"  follows_aia: {_b(follows_aia)}",
        "  roots: {store: " + _q(base.roots.store)
        + (f", add: [{', '.join(_q(r) for r in base.roots.add)}]" if base.roots.add else "")
        + (f", remove: [{', '.join(_q(r) for r in base.roots.remove)}]" if base.roots.remove else "") + "}",
        f"dns: {{resolver: {base.dns_resolver}}}",
        "evidence:",
        *claims,
        "notes: >-",
    ]
    notes = [f"Measured through the capture lab; {', '.join(kept)} come from {base.id} "
             f"(confidence {confidence}), because a private test root cannot show which public roots "
             "the device trusts.", *result.notes]
    lines += [f"  {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _about(facets: Iterable[str]) -> str:
    listed = list(facets)
    return f", about: [{', '.join(listed)}]" if listed else ""


def _b(value: bool) -> str:
    return "true" if value else "false"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
