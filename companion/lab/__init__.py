"""The TLS capture lab: endpoints that record how a client's TLS stack behaves, and the capture run.

``hello`` parses what a client sends (pure), ``pki`` makes the per-run lab CA and its chains,
``server`` is the endpoint (the one I/O shell), ``media`` the tiny test stream and the Plex-shaped
answers around it, ``capture`` drives a target through the endpoints, ``draft`` turns the
observations into a profile draft (pure).
"""
