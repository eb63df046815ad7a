"""The secure-or-insecure decision for one fling (SECURITY.md section 3), and its explanation.

Pure: a profile, the device's roots, the measured ServerFacts and DnsFacts, the policy and ``now``
in; a Decision out. No sockets, no event loop, no clock reads. ``explain`` lists every check with
its verdict for ``companion explain``; ``decide`` is built on the same checks, so the two can
never disagree.

Order (SECURITY.md section 3): 1 policy ``disabled``; 2 the device plays https media; 3 the chain
(via :func:`companion.security.trust.verify_chain`: roots, intermediates as sent, validity, name,
then leaf RSA size / SHA-1 / ECDSA); 4 a common TLS version and cipher; 5 DNS for the device's
resolver kind; 6 the fallback under ``preferred`` (relay, else direct http) or a refusal under
``required``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509

from companion.errors import ProtocolError
from companion.proto.plexdirect import build_name
from companion.security.facts import DNS_REBIND_FIX, DnsFacts, ServerFacts
from companion.security.profiles import CrossSign, Profile
from companion.security.terms import TLS_VERSIONS, Policy
from companion.security.trust import Reason, VerifyCache, verify_chain

__all__ = ["Check", "Decision", "Mode", "Reason", "decide", "explain"]

Mode = Literal["direct-secure", "relay", "direct-insecure", "refused"]
_SHOWN_CIPHERS = 6


@dataclass(frozen=True)
class Check:
    """One line of ``companion explain``: passed True/False, or None when not applicable."""

    name: str
    passed: bool | None
    detail: str
    reasons: tuple[Reason, ...] = ()  # why it failed (empty when passed or not applicable)


@dataclass(frozen=True)
class Decision:
    """How one fling goes out, and why.

    ``protocol``/``address``/``port`` form the stream base handed to the target: https + the
    plex.direct name + the server port for ``direct-secure``; http + the server IP + port for
    ``direct-insecure``. For ``relay`` the protocol is http and ``address`` is "" / ``port`` 0:
    the caller fills in the relay's own address once it has set the relay up. ``refused`` carries
    no stream base.
    """

    mode: Mode
    secure: bool
    token_exposed: bool
    reasons: tuple[Reason, ...]
    protocol: str
    address: str
    port: int

    @property
    def stream_base(self) -> str:
        """``protocol://host:port`` (IPv6 bracketed), or "" when there is no address yet."""
        if not self.address or not self.protocol:
            return ""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.protocol}://{host}:{self.port}"


def _na(name: str, why: str) -> Check:
    return Check(name, None, f"not applicable: {why}")


def _fail(name: str, code: str, text: str) -> Check:
    return Check(name, False, text, (Reason(code, text),))


def _version_range(profile: Profile) -> tuple[str, ...]:
    low, high = profile.tls.min_version, profile.tls.max_version
    if low not in TLS_VERSIONS or high not in TLS_VERSIONS:
        return ()
    return TLS_VERSIONS[TLS_VERSIONS.index(low): TLS_VERSIONS.index(high) + 1]


def _listing(names: Sequence[str]) -> str:
    shown = list(names[:_SHOWN_CIPHERS])
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "") if shown else "none"


def _plex_direct_name(server_address: str, facts: ServerFacts | None, server_hash: str | None) -> str | None:
    """The name the device will be handed: the advertised hash when known, else the certificate's."""
    if facts is None or facts.plex_direct_hash is None:
        return None
    try:
        return build_name(server_address, server_hash or facts.plex_direct_hash)
    except ProtocolError:
        return None


def _tls_checks(profile: Profile, facts: ServerFacts) -> tuple[Check, Check]:
    wanted = _version_range(profile)
    if not wanted:
        bad = _fail("tls-version", "profile-invalid",
                    f"profile {profile.id} has an unknown TLS range "
                    f"{profile.tls.min_version}-{profile.tls.max_version}")
        return bad, _na("cipher", "no common TLS version")
    common = [v for v in wanted if v in facts.tls_versions]
    untested = sorted(set(wanted) & facts.tls_versions_untestable)
    note = (f" (TLS {', '.join(untested)} could not be tested: this machine's OpenSSL cannot offer it)"
            if untested else "")
    server = ", ".join(v for v in TLS_VERSIONS if v in facts.tls_versions) or "none"
    device = f"TLS {wanted[0]}" + (f"-{wanted[-1]}" if len(wanted) > 1 else "")
    if not common:
        version = _fail("tls-version", "tls-version-mismatch",
                        f"the device speaks {device}, the server accepts TLS {server}; no version in "
                        f"common{note}")
        return version, _na("cipher", "no common TLS version")
    version = Check("tls-version", True, f"common TLS versions: {', '.join(common)}{note}")
    if "1.3" in common:
        return version, Check("cipher", True, "TLS 1.3 is common; profiles do not restrict its suites")
    if profile.tls.ciphers is None:
        return version, Check("cipher", True, "the device accepts any cipher suite the server offers")
    shared = sorted(set(profile.tls.ciphers) & facts.ciphers)
    if not shared:
        return version, _fail(
            "cipher", "cipher-mismatch",
            f"no cipher suite in common for TLS <= 1.2: the device offers {_listing(profile.tls.ciphers)}; "
            f"the server accepts {_listing(sorted(facts.ciphers))}",
        )
    return version, Check("cipher", True, f"common cipher suites: {_listing(shared)}")


def _dns_check(profile: Profile, dns: DnsFacts | None, name: str | None, server_address: str) -> Check:
    if profile.dns_resolver == "public":
        return Check("dns", True, "the device uses public DNS, which answers plex.direct names")
    if name is None:
        return _na("dns", "there is no plex.direct name to resolve")
    if dns is None:
        return Check("dns", None, f"not checked: {name} was not looked up through the LAN resolver")
    if dns.outcome == "ok":
        return Check("dns", True, f"{dns.name} resolves to {server_address} through {dns.resolver}")
    if dns.outcome == "stripped":
        return _fail("dns", "dns-stripped",
                     f"the LAN resolver {dns.resolver} returns no address for {dns.name}: it strips "
                     f"answers that point at private addresses (DNS rebinding protection). {DNS_REBIND_FIX}")
    if dns.outcome == "wrong-address":
        answers = ", ".join(dns.answers) or "nothing"
        return _fail("dns", "dns-wrong-address",
                     f"{dns.name} resolves to {answers} through {dns.resolver}, not to the server's "
                     f"{server_address}; the device would connect elsewhere")
    return _fail("dns", "dns-unreachable",
                 f"the LAN resolver {dns.resolver} could not be asked for {dns.name} ({dns.detail}); "
                 "the device would likely fail to resolve it too")


def explain(
    *,
    profile: Profile,
    roots: Sequence[x509.Certificate],
    server_address: str,
    server_port: int,
    facts: ServerFacts | None,
    dns: DnsFacts | None,
    policy: Policy,
    relay_available: bool,
    now: datetime,
    server_hash: str | None = None,
    verify_cache: VerifyCache | None = None,
    cross_signs: Sequence[CrossSign] = (),
) -> list[Check]:
    """Every check of SECURITY.md section 3 in order, each passed / failed / not applicable.

    ``server_hash`` is the hash the server is known by (GDM ``Host``, plex.tv); when given, the
    plex.direct name is built from it, so a certificate for another hash fails as name-mismatch.
    Without it the certificate's own hash is used.
    """
    checks: list[Check] = []
    if policy == "disabled":
        checks.append(_fail("policy", "policy-disabled",
                            "security policy is 'disabled': every fling goes over plain http"))
    else:
        checks.append(Check("policy", True, f"security policy is {policy!r}"))

    if profile.media_https:
        checks.append(Check("device-tls", True, f"{profile.name} plays https media"))
    else:
        checks.append(_fail("device-tls", "device-no-tls",
                            f"{profile.name} (profile {profile.id}) cannot play https media, so its "
                            "stream cannot be secure"))
        checks.extend(_na(check, "the device plays no https media")
                      for check in ("server-tls", "plex-direct-hash", "chain", "tls-version", "cipher", "dns"))
        return checks

    where = f"{server_address}:{server_port}"
    if facts is None:
        checks.append(_fail("server-tls", "server-no-tls",
                            f"the server at {where} offers no TLS (or could not be probed); enable "
                            "secure connections in the server's network settings"))
        checks.extend(_na(check, "the server offers no TLS")
                      for check in ("plex-direct-hash", "chain", "tls-version", "cipher", "dns"))
        return checks
    checks.append(Check("server-tls", True, f"the server at {where} speaks TLS"))

    name = _plex_direct_name(server_address, facts, server_hash)
    if facts.plex_direct_hash is None:
        checks.append(_fail("plex-direct-hash", "no-plex-direct-hash",
                            f"the server's certificate has no *.<hash>.plex.direct name, so no device can "
                            f"verify it for {server_address}; enable secure connections in Plex's network "
                            "settings (a custom certificate needs a name the device resolves)"))
        checks.append(_na("chain", "there is no plex.direct name to verify"))
    elif name is None:
        checks.append(_fail("plex-direct-hash", "no-plex-direct-name",
                            f"no plex.direct name can be built for {server_address!r} with hash "
                            f"{server_hash or facts.plex_direct_hash!r} (an IP address and 32 hex "
                            "characters are needed)"))
        checks.append(_na("chain", "there is no plex.direct name to verify"))
    else:
        checks.append(Check("plex-direct-hash", True, f"the server's name for this fling is {name}"))
        if verify_cache is not None:
            result = verify_cache.verify(facts, roots, name=name, now=now, tls=profile.tls, cross_signs=cross_signs)
        else:
            result = verify_chain(facts, roots, name=name, now=now, tls=profile.tls, cross_signs=cross_signs)
        if result.ok:
            checks.append(Check("chain", True, "the device can verify the chain: " + " <- ".join(result.path)))
        else:
            checks.append(Check("chain", False, "; ".join(r.text for r in result.reasons), result.reasons))

    checks.extend(_tls_checks(profile, facts))
    checks.append(_dns_check(profile, dns, name, server_address))
    return checks


def decide(
    *,
    profile: Profile,
    roots: Sequence[x509.Certificate],
    server_address: str,
    server_port: int,
    facts: ServerFacts | None,
    dns: DnsFacts | None,
    policy: Policy,
    relay_available: bool,
    now: datetime,
    server_hash: str | None = None,
    verify_cache: VerifyCache | None = None,
    cross_signs: Sequence[CrossSign] = (),
) -> Decision:
    """The mode, stream base and reasons for one fling (SECURITY.md section 3; see ``explain``)."""
    checks = explain(profile=profile, roots=roots, server_address=server_address, server_port=server_port,
                     facts=facts, dns=dns, policy=policy, relay_available=relay_available, now=now,
                     server_hash=server_hash, verify_cache=verify_cache, cross_signs=cross_signs)
    exposed = Reason("token-exposed-plaintext",
                     f"the device fetches http://{_host(server_address)}:{server_port} directly: the Plex "
                     "token and the media cross the network unencrypted")
    if policy == "disabled":
        return Decision("direct-insecure", False, True, (*checks[0].reasons, exposed), "http",
                        server_address, server_port)

    failures = tuple(reason for check in checks if check.passed is False for reason in check.reasons)
    # dns may be "not checked" (None) and still allow a secure fling; every other check must pass.
    secure = not failures and all(c.passed for c in checks if c.name != "dns")
    secure_name = _plex_direct_name(server_address, facts, server_hash)
    if secure and secure_name is not None:
        return Decision("direct-secure", True, False, (), "https", secure_name, server_port)

    if policy == "required":
        refusal = Reason("policy-required-refused",
                         "security policy 'required' forbids an insecure fling; fix the reasons above, "
                         "or set security.policy to 'preferred' to allow a flagged insecure one")
        return Decision("refused", False, False, (*failures, refusal), "", "", 0)
    if not profile.media_http:
        no_http = Reason("device-no-http",
                         f"{profile.name} cannot play http media either, so there is no insecure fallback")
        return Decision("refused", False, False, (*failures, no_http), "", "", 0)
    # The relay fetches from the server over https; a server without TLS gains nothing from it.
    if relay_available and facts is not None:
        relay = Reason("relay-last-hop-plaintext",
                       "the bridge fetches the stream over verified https and relays it to the device over "
                       "plain http: the token stays with the bridge, but the media crosses the LAN "
                       "unencrypted")
        return Decision("relay", False, False, (*failures, relay), "http", "", 0)
    return Decision("direct-insecure", False, True, (*failures, exposed), "http", server_address, server_port)


@functools.lru_cache(maxsize=256)
def _host(address: str) -> str:
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        return address
