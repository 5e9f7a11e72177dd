"""Control layer: the HTTP API that tenants and the CLI use to manage workers.

Owns: the Starlette app under ``/client/v4`` (``create_app``), bearer-token
authentication and per-account authorisation, parsing requests (multipart
uploads, JSON bodies) and their size limits, the response envelope and error
codes, and the local admin action ``create_account_with_token``.

May call: warren.store (through the ``Store`` protocol), Starlette; the
dashboard subpackage (its static UI, and previews in a supervisor of its own).
Must not touch: the database directly, isolates, the edge's supervisor, edge routing.
Never returns or logs a secret's value; the only secret it ever shows is a new
token's, once, to the local admin.
"""

from warren.control.app import ApiError, create_account_with_token, create_app, stop_app

__all__ = ["ApiError", "create_account_with_token", "create_app", "stop_app"]
