"""The secure relay: the bridge fetches from the Plex server over verified TLS and serves one target."""
