"""A client of the control-plane HTTP API (docs/control-plane.md), for the CLI.

Owns: HTTP requests to ``/client/v4``, the ``{"success", "errors", "result"}``
envelope, and turning every failure (an error answer, a non-JSON answer, a server
that cannot be reached) into one ``ApiError``. Knows nothing of click, config
files or projects on disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

API_PREFIX = "/client/v4"
DEFAULT_TIMEOUT = 60.0  # uploads go up to 10 MB


class ApiError(Exception):
    """The API refused a request, or could not be reached (``status`` 0).

    ``errors`` are the envelope's ``[{"code": int, "message": str}]``.
    """

    def __init__(self, status: int, errors: Sequence[Mapping[str, Any]]) -> None:
        self.status = status
        self.errors: list[dict[str, Any]] = [dict(error) for error in errors]
        super().__init__(self.describe())

    @property
    def codes(self) -> list[int]:
        return [error["code"] for error in self.errors if isinstance(error.get("code"), int)]

    def describe(self) -> str:
        parts = []
        for error in self.errors:
            message = str(error.get("message") or "unknown error")
            code = error.get("code")
            parts.append(f"{message} [code {code}]" if isinstance(code, int) and code else message)
        text = "; ".join(parts) or "unknown error"
        return f"{text} (HTTP {self.status})" if self.status else text


@dataclass(frozen=True)
class Module:
    """One module of an upload: its name (a relative path), content type and bytes."""

    name: str
    content_type: str
    data: bytes


def api_root(url: str) -> str:
    """The API's base URL ending in ``/client/v4``, whether or not ``url`` has it."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return url if url.endswith(API_PREFIX) else url + API_PREFIX


def _segment(value: str) -> str:
    return quote(value, safe="")


class ApiClient:
    """The control-plane API at ``base_url`` (with or without ``/client/v4``) as one token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = api_root(base_url)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "warren-cli"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport and envelope ------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return the envelope's ``result``; raise ``ApiError`` otherwise."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ApiError(0, [{"code": 0, "message": f"{self.base_url} did not answer in time"}]) from None
        except httpx.HTTPError as exc:
            raise ApiError(0, [{"code": 0, "message": f"cannot reach {self.base_url}: {exc}"}]) from None
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or "success" not in body:
            snippet = response.text.strip().replace("\n", " ")[:200]
            raise ApiError(
                response.status_code,
                [{"code": 0, "message": f"unexpected answer from {method} {path}: {snippet or 'empty body'}"}],
            )
        errors = body.get("errors")
        if not isinstance(errors, list):
            errors = []
        errors = [error if isinstance(error, dict) else {"code": 0, "message": str(error)} for error in errors]
        if body.get("success") is not True or response.is_error:
            raise ApiError(response.status_code, errors or [{"code": 0, "message": response.reason_phrase}])
        return body.get("result")

    def _script_path(self, account_id: str, script: str, *rest: str) -> str:
        path = f"/accounts/{_segment(account_id)}/workers/scripts/{_segment(script)}"
        return "/".join([path, *(_segment(part) for part in rest)])

    # -- identity ----------------------------------------------------------------

    def verify_token(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/user/tokens/verify")
        return result

    def accounts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/accounts")
        return result

    # -- scripts and versions ----------------------------------------------------

    @staticmethod
    def _multipart(metadata: Mapping[str, Any], modules: Sequence[Module]) -> list[tuple[str, tuple[Any, ...]]]:
        files: list[tuple[str, tuple[Any, ...]]] = [
            ("metadata", ("metadata.json", json.dumps(metadata).encode(), "application/json"))
        ]
        files.extend((module.name, (module.name, module.data, module.content_type)) for module in modules)
        return files

    def deploy_script(
        self, account_id: str, script: str, metadata: Mapping[str, Any], modules: Sequence[Module]
    ) -> dict[str, Any]:
        """Upload a version and deploy it at 100%: script info + ``version_id``, ``deployment_id``."""
        result: dict[str, Any] = self.request(
            "PUT", self._script_path(account_id, script), files=self._multipart(metadata, modules)
        )
        return result

    def upload_version(
        self, account_id: str, script: str, metadata: Mapping[str, Any], modules: Sequence[Module]
    ) -> dict[str, Any]:
        """Upload a version without deploying it."""
        result: dict[str, Any] = self.request(
            "POST", self._script_path(account_id, script, "versions"), files=self._multipart(metadata, modules)
        )
        return result

    def list_scripts(self, account_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", f"/accounts/{_segment(account_id)}/workers/scripts")
        return result

    def get_script(self, account_id: str, script: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", self._script_path(account_id, script))
        return result

    def delete_script(self, account_id: str, script: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", self._script_path(account_id, script))
        return result

    def list_versions(self, account_id: str, script: str) -> list[dict[str, Any]]:
        """Newest first."""
        result: list[dict[str, Any]] = self.request("GET", self._script_path(account_id, script, "versions"))
        return result

    def get_version(self, account_id: str, script: str, version: str) -> dict[str, Any]:
        """A version by id or number."""
        result: dict[str, Any] = self.request("GET", self._script_path(account_id, script, "versions", version))
        return result

    # -- deployments ---------------------------------------------------------------

    def create_deployment(
        self, account_id: str, script: str, versions: Sequence[tuple[str, int]], message: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "versions": [{"version_id": version_id, "percentage": percentage} for version_id, percentage in versions]
        }
        if message:
            body["annotations"] = {"workers/message": message}
        result: dict[str, Any] = self.request("POST", self._script_path(account_id, script, "deployments"), json=body)
        return result

    def list_deployments(self, account_id: str, script: str) -> list[dict[str, Any]]:
        """Newest first; the first is the current one."""
        result: list[dict[str, Any]] = self.request("GET", self._script_path(account_id, script, "deployments"))
        return result

    # -- secrets -------------------------------------------------------------------

    def put_secret(self, account_id: str, script: str, name: str, text: str) -> dict[str, Any]:
        body = {"name": name, "text": text, "type": "secret_text"}
        result: dict[str, Any] = self.request("PUT", self._script_path(account_id, script, "secrets"), json=body)
        return result

    def list_secrets(self, account_id: str, script: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", self._script_path(account_id, script, "secrets"))
        return result

    def delete_secret(self, account_id: str, script: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", self._script_path(account_id, script, "secrets", name))
        return result
