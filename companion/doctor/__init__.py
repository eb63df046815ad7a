"""``companion doctor``: checks of the machine and network the bridge depends on, each with its fix.

One module per theme: ``findings`` (the records, the exit code, the text and JSON renderings),
``lan`` (GDM multicast, mDNS, ports, plex.direct DNS), ``servers`` (each known server's chain
against every profile, the clock), ``visible`` (where each face is seen, plex.tv's list) and
``run`` (every check in order). The command itself is ``companion.commands.doctor``. Every
network step is bounded by a timeout; nothing here sends a token anywhere except the account
token to plex.tv, in the plex.tv check.
"""
