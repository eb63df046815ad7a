"""What a target receives of the server's bytes: the token scrubbed out, server URLs pointed at the relay.

Text answers (XML, JSON, HLS and DASH playlists) are read whole: every form of the token is
removed and absolute URLs to the upstream server are rewritten to the relay (:class:`Rewriter`).
Streamed bodies pass through :class:`TokenScrubber`, which replaces the token with a same-length
filler so that lengths and byte ranges stay true.

Video, audio and image bodies are not searched at all, by decision (:func:`body_needles` says
why); such a body with a known length goes from the reader thread straight to the target
(:meth:`companion.relay.pump.UpstreamStream.send_to`). Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import quote

# Text responses are read whole, scrubbed and rewritten; everything else streams.
_TEXT_TYPES = frozenset({
    "application/xml", "application/json", "application/javascript", "application/vnd.apple.mpegurl",
    "application/x-mpegurl", "audio/mpegurl", "audio/x-mpegurl", "application/dash+xml",
})


def host_literal(address: str) -> str:
    """An address as a URL host: IPv6 in brackets."""
    return f"[{address}]" if ":" in address else address


class TokenScrubber:
    """Replaces secrets in a byte stream with same-length filler, across chunk boundaries.

    Same length so that Content-Length and byte ranges of media stay true. The last
    ``longest - 1`` bytes are held back until the next chunk shows whether a secret straddles.
    The common case (no secret near) costs one search and one copy per chunk.
    """

    def __init__(self, needles: Collection[bytes]) -> None:
        self._needles = tuple(sorted({n for n in needles if n}, key=len, reverse=True))
        self._hold = max((len(n) for n in self._needles), default=1) - 1
        self._carry = b""

    def _replace(self, data: bytes) -> bytes:
        for needle in self._needles:
            if needle in data:
                data = data.replace(needle, b"x" * len(needle))
        return data

    def _found(self, data: bytes) -> bool:
        return any(needle in data for needle in self._needles)

    def feed(self, chunk: bytes) -> list[bytes | bytearray]:
        """What may be sent now, in order (possibly nothing)."""
        hold = self._hold
        if hold == 0:
            return [self._replace(chunk)]
        # A secret straddling the held bytes and this chunk ends within the chunk's first
        # ``hold`` bytes, so this small window and the chunk itself cover every occurrence.
        if len(chunk) > hold and not self._found(chunk) and not self._found(self._carry + chunk[:hold]):
            # One buffer, one copy: a separate send of the few held bytes would cost a syscall and
            # a tiny TCP segment per chunk, more than copying the chunk once.
            out = bytearray(self._carry)
            out += memoryview(chunk)[:-hold]
            self._carry = chunk[-hold:]
            return [out]
        data = self._replace(self._carry + chunk)
        self._carry = data[-hold:]
        return [data[:-hold]] if len(data) > hold else []

    def finish(self) -> bytes:
        """The bytes still held back, once the stream has ended."""
        rest, self._carry = self._carry, b""
        return rest


def token_needles(token: str) -> tuple[bytes, ...]:
    """The token as it may appear in a body: raw, percent-encoded, JSON-escaped."""
    forms = {token, quote(token, safe=""), token.replace("/", "\\/")}
    return tuple(f.encode() for f in forms)


class Rewriter:
    """Points absolute URLs of one upstream server at the relay, in bytes (XML, JSON, playlists)."""

    def __init__(self, host: str, address: str, port: int) -> None:
        hosts = {host.lower(), address.lower(), host_literal(address).lower()}
        names = b"|".join(re.escape(h.encode()) for h in sorted(hosts, key=len, reverse=True))
        # JSON may escape slashes (https:\/\/host); both spellings point at the same server.
        self._pattern = re.compile(
            rb"https?:(//|\\/\\/)(?:" + names + rb"):" + str(port).encode() + rb"(?![0-9])",
            re.IGNORECASE,
        )

    def rewrite(self, body: bytes, base: str) -> bytes:
        """``body`` with the server's absolute URLs pointed at ``base`` (the grant's relay URL)."""
        plain = base.encode()
        escaped = base.replace("/", "\\/").encode()
        return self._pattern.sub(lambda m: escaped if m.group(1) != b"//" else plain, body)


def is_text(content_type: str) -> bool:
    """Whether a body of this type is read whole, scrubbed and rewritten (else it streams)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind.startswith("text/") or kind in _TEXT_TYPES or kind.endswith(("+xml", "+json"))


def body_needles(content_type: str, token: str) -> tuple[bytes, ...]:
    """What a streamed body is scrubbed of: nothing for media, the token's forms for anything else.

    Video, audio and image bodies are the bytes of a library file or of the transcoder's output:
    the server never writes the token into them, so searching every byte of a film for it only
    costs CPU (a third of the relay's CPU time per GiB in ``bench/relay_throughput.py`` when it was
    measured; docs/relay-allow-list.md, "What the relay scrubs"). The
    playlists among those types (``audio/mpegurl``, ...) are text and are read whole and scrubbed
    elsewhere; any other type that streams (``application/octet-stream``, subtitles) is scrubbed.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind.startswith(("video/", "audio/", "image/")) and not is_text(kind):
        return ()
    return token_needles(token)


__all__ = ["Rewriter", "TokenScrubber", "body_needles", "host_literal", "is_text", "token_needles"]
