"""Hardening tests: fuzz harness smoke runs, hostile HTTP, SSRF, secrets, faults, durability, load."""
