"""The one exception tree of companion-bridge: every error we raise is a CompanionError.

Library errors (aiohttp, ssl, yaml, pychromecast, dnspython) are translated into these at the
adapter that called the library, so callers handle one family and messages stay readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class CompanionError(Exception):
    """Root of every error companion-bridge raises on purpose."""


class LocatedError(CompanionError):
    """An error in a file the user wrote: the message starts with ``file:line: key:``."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.detail = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        what = f"{key}: " if key else ""
        super().__init__(f"{where}{what}{message}")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean X?)"`` for the closest of ``choices`` to a misspelt ``word``, else ``""``."""
    import difflib  # only when a name is wrong: a daemon that starts cleanly never loads it

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _gather(into: LocatedError, errors: Sequence[LocatedError]) -> None:
    """Make ``into`` stand for several located errors: the first's place, every line's text."""
    first = errors[0]
    LocatedError.__init__(into, first.detail, path=first.path, line=first.line, key=first.key)
    into.args = ("\n".join(str(e) for e in errors),)


class ConfigError(LocatedError):
    """The configuration file is unreadable or holds a bad key, type or value.

    The message names the file, the line and the key, e.g.
    ``/etc/companion/config.yaml:12: gdm.hello_interval: expected a number, got 'soon'``.
    """


class ProfileError(LocatedError):
    """A device profile or root store is malformed (message names file:line and key)."""


class ConfigErrors(ConfigError):
    """Every problem found in one configuration file (``errors``), one line each."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        _gather(self, errors)
        self.errors = tuple(errors)


class ProfileErrors(ProfileError):
    """Every problem found in one profile or store file (``errors``), one line each."""

    def __init__(self, errors: Sequence[ProfileError]) -> None:
        _gather(self, errors)
        self.errors = tuple(errors)


class ProtocolError(CompanionError):
    """Bytes or a request from the network do not follow the protocol (GDM, Companion, XML, Cast)."""


class StateError(CompanionError):
    """The state directory cannot be read or written."""


class TargetError(CompanionError):
    """A command could not be carried to a target."""


class TargetUnavailable(TargetError):
    """The target refused the connection, is gone, or answered with garbage."""


class TargetTimeout(TargetError):
    """The target did not answer within the command timeout."""


class CommandNotSupported(TargetError):
    """The target has no such feature (e.g. navigation on a Chromecast)."""


class TrustError(CompanionError):
    """A server's TLS facts could not be gathered or its chain could not be checked."""


class PolicyRefusal(CompanionError):
    """The security policy forbids this fling; the message says why and what to change."""


class PlexTvError(CompanionError):
    """plex.tv answered a call with an error (the message names the call, never a token)."""


class PlexTvUnreachable(PlexTvError):
    """plex.tv could not be reached: DNS, connection, TLS or a timeout."""


class PlexTvUnauthorized(PlexTvError):
    """plex.tv answered 401: the token is not (or no longer) valid."""


class PlexTvDenied(PlexTvError):
    """plex.tv answered 403: it refuses this client or this account."""


class PinExpired(PlexTvError):
    """The link code expired (or plex.tv no longer knows it) before it was entered."""
