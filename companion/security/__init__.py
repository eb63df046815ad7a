"""Secure flinging: device profiles, server and DNS facts, chain trust, and the per-fling decision.

Leaves first: ``terms`` (policies, TLS versions) and ``facts`` (what was measured) import nothing
of this package; ``profiles`` and ``trust`` build on them; ``decide`` sits on top. The I/O shells
``probe`` and ``dnscheck`` fill in the facts.
"""
