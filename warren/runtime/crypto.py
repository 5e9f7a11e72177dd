"""The host side of WebCrypto (``crypto`` and ``crypto.subtle`` in the isolate).

Primitives come from the ``cryptography`` package. Each Worker has its own
``CryptoHost``: key material lives here, in the worker's table, and the
isolate holds only an opaque handle, so no other tenant can reach it.

Protocol: the isolate calls the host function ``crypto(operation, arguments,
data)``: ``arguments`` is JSON, ``data`` binary as a latin-1 string (or null).
The answer is a JSON string: ``{"ok": true, ...}`` or
``{"ok": false, "name": DOMException name, "message": ...}``.
"""

from __future__ import annotations

import json
import os


class CryptoHost:
    def call(self, operation: str, arguments: str, data: str | None) -> str:
        if operation == "randomBytes":
            count = int(json.loads(arguments)["length"])
            if not 0 <= count <= 65536:
                return json.dumps({"ok": False, "name": "QuotaExceededError", "message": "at most 65536 bytes"})
            return json.dumps({"ok": True, "data": os.urandom(count).decode("latin-1")})
        return json.dumps({"ok": False, "name": "NotSupportedError", "message": f"{operation} is not supported"})
