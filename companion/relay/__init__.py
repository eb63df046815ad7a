"""The secure relay: the bridge fetches from the Plex server over verified TLS and serves one target.

For a target that cannot verify the server's plex.direct chain (SECURITY.md section 3, mode
``relay``) the bridge hands it ``http://<bridge-ip>:<relay-port>/<capability>`` as its stream base.
The package holds that HTTP surface and everything behind it, one job per module:

* :mod:`~companion.relay.server`: the aiohttp server (:class:`~companion.relay.server.Relay`, an
  async context manager) and the forwarding of each request to the server;
* :mod:`~companion.relay.grants`: capabilities, each for one target address and one server, that
  lapse when unused, are replaced by a newer fling and revoked when a face stops;
* :mod:`~companion.relay.paths`: the path allow-list (only the Plex API a player needs for
  playback) and the query filter; :mod:`~companion.relay.scope`: which library items one grant
  reaches;
* :mod:`~companion.relay.scrub`: the token (``X-Plex-Token``, added upstream only) scrubbed from
  what goes back, and server URLs in bodies pointed at the relay: the last hop is plaintext on
  the LAN, which is exactly why the token must not travel on it;
* :mod:`~companion.relay.pump`: direct-play media bodies read by a thread over blocking TLS;
* :mod:`~companion.relay.counters`: the numbers the admin side reads.

The upstream's chain is verified and its leaf pinned by :mod:`companion.security.upstream`, beside
the probe, with the same handshake.
"""
