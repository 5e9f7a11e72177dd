"""What store methods raise when a request cannot be carried out.

All are ``ValueError``s, as the contract says; the subclasses let the HTTP API
tell a bad request (400) from a missing object (404) and a clash (409) without
matching on messages. Messages are meant for the client and never hold secrets.
"""

from __future__ import annotations


class StoreError(ValueError):
    """Base of the store's expected failures; nothing was written."""


class InvalidInput(StoreError):
    """Malformed or out-of-range input (a name, a module, a binding, a percentage…)."""


class NotFound(StoreError):
    """The account, script, version or namespace referred to does not exist."""


class Conflict(StoreError):
    """The name or pattern is already taken."""


class PreconditionFailed(StoreError):
    """The write was computed from a state that another writer has since changed (``ExpectDeployment``)."""
