"""Secure flinging: device profiles, server and DNS facts, chain trust, and the per-fling decision.

Leaves first: ``terms`` (policies, TLS versions) and ``facts`` (what was measured) import nothing
of this package; ``profiles`` and ``trust`` build on them; ``decide`` sits on top. The I/O shells
``probe`` and ``dnscheck`` fill in the facts. ``tls`` (a leaf) holds the one handshake and the
one certifi loader, shared by the probe, the root stores and ``upstream``: the relay's own
verification and pinning of the Plex server it fetches from.
"""
