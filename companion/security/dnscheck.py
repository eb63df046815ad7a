"""plex.direct resolution as a device sees it: does the LAN resolver answer the server's name?

The I/O shell for SECURITY.md section 2 (DnsFacts). Many routers strip DNS answers that point at
private addresses (dnsmasq ``--stop-dns-rebind``, Unbound ``private-address``), which breaks
``<dashed-ip>.<hash>.plex.direct`` for LAN servers. When the private name comes back empty, one
control query for a public address under the same hash tells "strips private answers" apart from
"cannot resolve plex.direct at all".
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from companion.errors import ProtocolError
from companion.proto.plexdirect import dashed_address, parse_name
from companion.security.facts import DNS_REBIND_FIX, DnsFacts

if TYPE_CHECKING:
    import dns.asyncresolver

# dnspython (about 4 MB resident with its modules) is imported by the functions that query, on the
# first check: a daemon with the DNS check off never loads it.

# Public addresses used only inside the control query's name; nothing is ever sent to them.
_CONTROL_V4 = "1.1.1.1"
_CONTROL_V6 = "2606:4700:4700::1111"


def _make_resolver(resolver: tuple[str, int] | None, timeout: float) -> tuple[dns.asyncresolver.Resolver, str]:
    import dns.asyncresolver

    if resolver is None:
        res = dns.asyncresolver.Resolver(configure=True)
        servers = ", ".join(f"{ns}:{res.port}" for ns in res.nameservers) or "none"
        label = f"system ({servers})"
    else:
        host, port = resolver
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = [host]
        res.port = port
        label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    res.timeout = timeout
    res.lifetime = timeout
    res.cache = None
    return res, label


async def _query(res: dns.asyncresolver.Resolver, name: str, rdtype: str) -> tuple[str, ...]:
    """Addresses in the answer; () for NXDOMAIN or an empty answer. Other errors propagate."""
    import dns.name
    import dns.resolver

    try:
        answer = await res.resolve(dns.name.from_text(name), rdtype, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        return ()
    if answer.rrset is None:
        return ()
    return tuple(sorted(str(ipaddress.ip_address(r.to_text())) for r in answer.rrset))


async def check_plex_direct(
    name: str,
    expected_address: str,
    *,
    resolver: tuple[str, int] | None = None,
    timeout: float = 2.0,
) -> DnsFacts:
    """Ask ``resolver`` (None: the system's /etc/resolv.conf) for ``name`` and judge the answer.

    Raises ProtocolError when ``expected_address`` is not an IP address; every resolver failure is
    an outcome (``unreachable``), not an exception.
    """
    import dns.exception
    import dns.resolver

    try:
        expected = ipaddress.ip_address(expected_address)
    except ValueError as exc:
        raise ProtocolError(f"expected address {expected_address!r} is not an IP address") from exc
    rdtype = "AAAA" if expected.version == 6 else "A"
    try:
        res, label = _make_resolver(resolver, timeout)
    except (dns.resolver.NoResolverConfiguration, OSError) as exc:
        return DnsFacts("unreachable", name, (), "system", f"no usable resolver configuration: {exc}")
    except ValueError as exc:
        return DnsFacts("unreachable", name, (), str(resolver), f"bad resolver address: {exc}")

    try:
        answers = await _query(res, name, rdtype)
    except (dns.exception.Timeout, dns.resolver.NoNameservers, OSError) as exc:
        return DnsFacts("unreachable", name, (), label, _failure(label, exc, timeout))
    except dns.exception.DNSException as exc:
        return DnsFacts("unreachable", name, (), label, f"resolver {label} gave no usable answer: {exc}")

    if answers:
        if str(expected) in answers:
            return DnsFacts("ok", name, answers, label, f"{name} resolves to {expected} through {label}")
        return DnsFacts(
            "wrong-address", name, answers, label,
            f"{name} resolves to {', '.join(answers)} through {label}, not to the server's {expected}",
        )
    return DnsFacts("stripped", name, (), label, await _stripped_detail(res, label, name, expected, rdtype))


async def _stripped_detail(
    res: dns.asyncresolver.Resolver, label: str, name: str,
    expected: ipaddress.IPv4Address | ipaddress.IPv6Address, rdtype: str,
) -> str:
    import dns.exception

    base = f"resolver {label} returns no address for {name}"
    try:
        server_hash = parse_name(name).hash
    except ProtocolError:
        return f"{base}. {DNS_REBIND_FIX}"
    control_ip = _CONTROL_V6 if expected.version == 6 else _CONTROL_V4
    control = f"{dashed_address(control_ip)}.{server_hash}.plex.direct"
    try:
        control_answers = await _query(res, control, rdtype)
    except (dns.exception.DNSException, OSError):
        control_answers = ()
    if control_answers:
        why = ("while a public address under the same name resolves: it strips private answers "
               "(DNS rebinding protection)")
    else:
        why = "and no plex.direct name resolves through it at all (it may block or fail the whole domain)"
    return f"{base} {why}. {DNS_REBIND_FIX}"


def _failure(label: str, exc: BaseException, timeout: float) -> str:
    import dns.exception
    import dns.resolver

    if isinstance(exc, dns.exception.Timeout):
        return f"resolver {label} did not answer within {timeout:g} s"
    if isinstance(exc, dns.resolver.NoNameservers):
        return f"resolver {label} refused or failed the query (REFUSED/SERVFAIL or port closed)"
    return f"resolver {label} cannot be reached: {exc}"
