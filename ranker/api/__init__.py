"""The HTTP serving API (``ranker serve``): FastAPI on uvicorn over :mod:`ranker.serving.service`.

Public surface: :func:`create_app` (an ASGI app for a database) and
:func:`ranker.api.server.serve` (what ``ranker serve`` runs). Routes and their errors
are listed in ``docs/api.md`` and at ``/docs`` on a running server.
"""

from ranker.api.app import create_app

__all__ = ["create_app"]
