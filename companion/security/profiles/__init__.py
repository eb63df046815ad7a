"""Device capability profiles: what each kind of device can do for a secure fling, and its roots.

The package's public face; each job has its module:

- ``model``: the data shape (:class:`Profile`, :class:`TlsCaps`, ...) and ``describe``;
- ``reading``: file size and encoding, typed access to the YAML with file:line:key errors;
- ``parse``: one device profile's text into a :class:`Profile`;
- ``roots``: the root stores (profiles/roots/*.yaml, the certifi bundle as ``mozilla``);
- ``profileset``: the loaded set, matching a device's discovery fields to its profile;
- ``loader``: loading and linting directories, checking references between files.

Format: SECURITY.md section 4; contributor guide: profiles/README.md. Pure data code: no sockets,
no asyncio.
"""

from companion.security.profiles.loader import lint, load_profiles, load_with_extra, shipped_profiles_dir
from companion.security.profiles.model import (
    CONFIDENCE_ORDER,
    DEFAULT_PROFILE_ID,
    MATCH_FIELDS,
    RESOLVERS,
    TRANSPORTS,
    Confidence,
    Evidence,
    Profile,
    RootsSpec,
    TlsCaps,
    describe,
)
from companion.security.profiles.parse import parse_profile
from companion.security.profiles.profileset import ProfileSet
from companion.security.profiles.roots import CrossSign, RootStore

__all__ = [
    "CONFIDENCE_ORDER", "DEFAULT_PROFILE_ID", "MATCH_FIELDS", "RESOLVERS", "TRANSPORTS", "Confidence", "CrossSign",
    "Evidence", "Profile", "ProfileSet", "RootStore", "RootsSpec", "TlsCaps", "describe", "lint", "load_profiles",
    "load_with_extra", "parse_profile", "shipped_profiles_dir",
]
