"""companion-bridge: presents LAN media players as Plex Companion players and secures every fling."""

__version__ = "0.1.0"
