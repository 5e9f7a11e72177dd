"""The control API's queues and cron-trigger routes (issue #10), shaped after Cloudflare's.

``/accounts/{a}/queues`` (create, list), ``…/queues/{queue}`` (get, delete; a
queue is named by id or by name), ``…/queues/{queue}/consumers`` (set the one
consumer: a second script is a 409), ``…/consumers/{script}`` (remove it),
``…/queues/{queue}/messages`` (send one message, as a producer would) and
``/accounts/{a}/workers/scripts/{name}/schedules`` (get, put: the script's
crons). The contract is in docs/control-plane.md.

Owns: these routes and their JSON shapes. Everything stored goes through the
``Store``; requests are checked by ``warren.store.validation``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from warren.store import Store
from warren.store.errors import InvalidInput
from warren.store.model import OutgoingMessage, Queue, QueueConsumer, ScriptInfo, Token
from warren.store.validation import MAX_QUEUE_DELAY_S

MAX_MESSAGE_BYTES = 128 * 1024


def queue_json(queue: Queue, backlog: int | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "queue_id": queue.id,
        "queue_name": queue.name,
        "created_on": queue.created_on,
        "modified_on": queue.modified_on,
        "producers": [],
        "producers_total_count": 0,
        "consumers": [consumer_json(queue, consumer) for consumer in queue.consumers],
        "consumers_total_count": len(queue.consumers),
    }
    if backlog is not None:
        result["backlog_count"] = backlog
    return result


def consumer_json(queue: Queue, consumer: QueueConsumer) -> dict[str, Any]:
    return {
        "consumer_id": consumer.script,
        "queue_name": queue.name,
        "script": consumer.script,
        "script_name": consumer.script,
        "type": "worker",
        "created_on": consumer.created_on,
        "dead_letter_queue": consumer.dead_letter_queue,
        "settings": {
            "batch_size": consumer.batch_size,
            "max_wait_time_ms": consumer.max_wait_ms,
            "max_retries": consumer.max_retries,
            "retry_delay": consumer.retry_delay,
        },
    }


def _consumer(body: dict[str, Any]) -> QueueConsumer:
    from warren.store import validation

    script = validation.script_name(body.get("script_name", body.get("script")))
    if body.get("type", "worker") != "worker":
        raise InvalidInput("warren queues have worker consumers only (type \"worker\")")
    settings = body.get("settings", {})
    if not isinstance(settings, dict):
        raise InvalidInput("settings must be an object")
    settings = dict(settings)
    if "max_wait_time_ms" in settings:  # Cloudflare's name for it
        settings["max_wait_ms"] = settings.pop("max_wait_time_ms")
    checked = validation.consumer_settings(settings)
    dead_letter = body.get("dead_letter_queue") or ""
    if dead_letter:
        dead_letter = validation.queue_name(dead_letter)
    return QueueConsumer(
        script=script,
        batch_size=checked["batch_size"],
        max_wait_ms=checked["max_wait_ms"],
        max_retries=checked["max_retries"],
        retry_delay=checked["retry_delay"],
        dead_letter_queue=dead_letter,
    )


def _message(body: dict[str, Any]) -> OutgoingMessage:
    """``{"body", "content_type": "json" (default) | "text" | "bytes" (base64), "delay_seconds"}``."""
    import json

    content_type = body.get("content_type", "json")
    if content_type not in ("json", "text", "bytes"):
        raise InvalidInput("content_type must be json, text or bytes")
    value = body.get("body")
    if content_type == "json":
        data = json.dumps(value, separators=(",", ":")).encode()
    elif not isinstance(value, str):
        raise InvalidInput(f"a {content_type} message's body is a string (base64 for bytes)")
    elif content_type == "text":
        data = value.encode("utf-8")
    else:
        try:
            data = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise InvalidInput("a bytes message's body must be base64") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidInput(f"a message is at most {MAX_MESSAGE_BYTES} bytes")
    delay = body.get("delay_seconds", 0)
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_QUEUE_DELAY_S:
        raise InvalidInput(f"delay_seconds is a whole number from 0 to {MAX_QUEUE_DELAY_S}")
    return OutgoingMessage(data, content_type, delay)


async def check_bindings(store: Store, account_id: str, bindings: Sequence[dict[str, Any]]) -> None:
    """An upload's queue producers must name queues of the account (as Cloudflare checks them)."""
    for binding in bindings:
        if isinstance(binding, dict) and binding.get("type") == "queue":
            name = binding.get("queue_name")
            queue = await store.get_queue(account_id, str(name)) if isinstance(name, str) else None
            if queue is None or queue.name != name:
                raise InvalidInput(f"binding {binding.get('name')!r}: queue {name!r} does not exist in this account")


def routes(
    store: Store,
    account_token: Callable[[Request], Awaitable[Token]],
    script_or_404: Callable[[str, str], Awaitable[ScriptInfo]],
) -> list[BaseRoute]:
    """The routes, built on the app's own helpers (imported here: the app imports this module)."""
    from warren.control.app import BASE, ApiError, _body, _json_object, _resource, envelope

    async def queue_or_404(account_id: str, name: str) -> Queue:
        queue = await store.get_queue(account_id, name)
        if queue is None:
            raise ApiError(404, f"queue {name!r} not found")
        return queue

    async def create_queue(request: Request) -> Response:
        token = await account_token(request)
        body = await _json_object(request)
        name = body.get("queue_name", body.get("name"))
        if not isinstance(name, str):
            raise InvalidInput("queue_name must be a string")
        queue = await store.create_queue(token.account_id, name)
        return envelope(queue_json(queue, 0))

    async def list_queues(request: Request) -> Response:
        token = await account_token(request)
        found = await store.list_queues(token.account_id)
        return envelope([queue_json(queue, await store.queue_backlog(token.account_id, queue.id)) for queue in found])

    async def get_queue(request: Request) -> Response:
        token = await account_token(request)
        queue = await queue_or_404(token.account_id, request.path_params["queue"])
        return envelope(queue_json(queue, await store.queue_backlog(token.account_id, queue.id)))

    async def delete_queue(request: Request) -> Response:
        token = await account_token(request)
        queue = await queue_or_404(token.account_id, request.path_params["queue"])
        await store.delete_queue(token.account_id, queue.id)
        return envelope({"queue_id": queue.id})

    async def list_consumers(request: Request) -> Response:
        token = await account_token(request)
        queue = await queue_or_404(token.account_id, request.path_params["queue"])
        return envelope([consumer_json(queue, consumer) for consumer in queue.consumers])

    async def put_consumer(request: Request) -> Response:
        token = await account_token(request)
        queue = await queue_or_404(token.account_id, request.path_params["queue"])
        body = await _json_object(request)
        if "consumer" in request.path_params:  # PUT …/consumers/{script}
            body["script_name"] = request.path_params["consumer"]
        consumer = _consumer(body)
        updated = await store.put_queue_consumer(token.account_id, queue.id, consumer)
        return envelope(consumer_json(updated, updated.consumers[0]))

    async def delete_consumer(request: Request) -> Response:
        token = await account_token(request)
        queue = await queue_or_404(token.account_id, request.path_params["queue"])
        script = request.path_params["consumer"]
        if not await store.delete_queue_consumer(token.account_id, queue.id, script):
            raise ApiError(404, f"{script!r} does not consume queue {queue.name!r}")
        return envelope({"consumer_id": script})

    async def send_message(request: Request) -> Response:
        token = await account_token(request)
        queue = await queue_or_404(token.account_id, request.path_params["queue"])
        message = _message(await _json_object(request))
        ids = await store.queue_send(token.account_id, queue.id, [message])
        return envelope({"message_id": ids[0]})

    async def get_schedules(request: Request) -> Response:
        token = await account_token(request)
        await script_or_404(token.account_id, request.path_params["name"])
        crons = await store.get_schedules(token.account_id, request.path_params["name"])
        return envelope({"schedules": [{"cron": cron} for cron in crons]})

    async def put_schedules(request: Request) -> Response:
        from warren.control.validation import parse_json

        token = await account_token(request)
        name = request.path_params["name"]
        await script_or_404(token.account_id, name)
        body = parse_json(await _body(request))
        if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
            raise InvalidInput('the body is a list of {"cron": "*/5 * * * *"}')
        crons = await store.put_schedules(token.account_id, name, [item.get("cron") for item in body])
        return envelope({"schedules": [{"cron": cron} for cron in crons]})

    account = BASE + "/accounts/{a}"
    queue = account + "/queues/{queue}"
    return [
        _resource(account + "/queues", GET=list_queues, POST=create_queue),
        _resource(queue, GET=get_queue, DELETE=delete_queue),
        _resource(queue + "/consumers", GET=list_consumers, POST=put_consumer),
        _resource(queue + "/consumers/{consumer}", PUT=put_consumer, DELETE=delete_consumer),
        _resource(queue + "/messages", POST=send_message),
        _resource(account + "/workers/scripts/{name}/schedules", GET=get_schedules, PUT=put_schedules),
    ]


__all__ = ["check_bindings", "consumer_json", "queue_json", "routes"]
