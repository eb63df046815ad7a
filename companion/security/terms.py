"""The words of secure flinging that config, profiles, the probe and the decision share.

A leaf: it imports nothing of companion, so any module may take these from here (SECURITY.md
sections 3 and 4).
"""

from __future__ import annotations

from typing import Literal

Policy = Literal["required", "preferred", "disabled"]
POLICIES: tuple[Policy, ...] = ("required", "preferred", "disabled")

# TLS versions a device or server may speak, oldest first: ranges are slices of this tuple.
TLS_VERSIONS: tuple[str, ...] = ("1.0", "1.1", "1.2", "1.3")
