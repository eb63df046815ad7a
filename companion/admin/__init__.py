"""The admin HTTP surface: status page with locks, JSON API, ``POST /api/fling`` and ``/metrics``.

app.py owns the server and routes, api.py the views and JSON shapes, page.py the HTML.
"""

from companion.admin.app import AdminServer

__all__ = ["AdminServer"]
