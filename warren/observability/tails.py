"""The tails a control plane has handed out, and what one sends.

A tail belongs to one account and script and lives ``TAIL_LIFETIME_S`` (1 h,
as on Cloudflare) or until deleted; its random id is the capability to its
WebSocket. The registry is the control-plane process's own: a tail is opened
on the process that created it. ``stream_tail`` runs one client: the store's
events of the script, filtered as the client asks, one text message each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from warren.observability.filters import FilterError, TailFilter

if TYPE_CHECKING:
    from warren.store import Store

TAIL_LIFETIME_S = 3600.0
MAX_TAILS_PER_ACCOUNT = 64


@dataclass
class Tail:
    id: str
    account_id: str
    script: str
    expires_at: float  # time.time()
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # set by delete: open sockets end

    @property
    def expires_iso(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @property
    def remaining(self) -> float:
        return self.expires_at - time.time()


class TailRegistry:
    def __init__(self, lifetime: float = TAIL_LIFETIME_S, max_per_account: int = MAX_TAILS_PER_ACCOUNT) -> None:
        self.lifetime = lifetime
        self.max_per_account = max_per_account
        self._tails: dict[str, Tail] = {}

    def _expire(self) -> None:
        now = time.time()
        for tail_id in [tail_id for tail_id, tail in self._tails.items() if tail.expires_at <= now]:
            self._tails.pop(tail_id).closed.set()

    def create(self, account_id: str, script: str) -> Tail:
        """A new tail; ValueError when the account already has ``max_per_account`` live ones."""
        self._expire()
        if sum(1 for tail in self._tails.values() if tail.account_id == account_id) >= self.max_per_account:
            raise ValueError(f"an account has at most {self.max_per_account} tails at once; delete one first")
        tail = Tail(secrets.token_hex(16), account_id, script, time.time() + self.lifetime)
        self._tails[tail.id] = tail
        return tail

    def get(self, account_id: str, script: str, tail_id: str) -> Tail | None:
        """The live tail with that id, if it belongs to that account and script."""
        self._expire()
        tail = self._tails.get(tail_id)
        if tail is None or not secrets.compare_digest(tail.account_id, account_id) or tail.script != script:
            return None
        return tail

    def delete(self, account_id: str, script: str, tail_id: str) -> bool:
        tail = self.get(account_id, script, tail_id)
        if tail is None:
            return False
        del self._tails[tail_id]
        tail.closed.set()
        return True

    def close_all(self) -> None:
        for tail in self._tails.values():
            tail.closed.set()
        self._tails.clear()


Receive = Callable[[], Awaitable[str | None]]  # the client's next text message; None once it has gone
Send = Callable[[str], Awaitable[None]]

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID = 1007  # a filter message that cannot be understood
MAX_CLOSE_REASON = 120  # bytes a WebSocket close frame's reason may hold (123), with room to spare


async def stream_tail(store: Store, tail: Tail, receive: Receive, send: Send, since_ms: int) -> tuple[int, str]:
    """Send the tail's events (filtered as the client asks) until the client goes, the tail is
    deleted or expires, or a filter message is malformed. Returns the close code and reason."""
    current = TailFilter()
    events = store.follow_events(tail.account_id, tail.script, since_ms)

    async def forward() -> tuple[int, str]:
        try:
            async for event in events:
                # Positioned by when events reached the store; shown are invocations that began
                # after the client connected, not one that ended just then.
                if int(event.get("eventTimestamp") or 0) >= since_ms and current.matches(event):
                    # ASCII JSON: a lone surrogate from a script's log cannot break the frame's UTF-8.
                    await send(json.dumps(event, separators=(",", ":")))
        finally:
            close = getattr(events, "aclose", None)  # the store's subscription goes with it
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        return CLOSE_GOING_AWAY, "the event stream ended"

    async def listen() -> tuple[int, str]:
        nonlocal current
        while True:
            text = await receive()
            if text is None:
                return CLOSE_NORMAL, ""
            try:
                current = TailFilter.parse(text)
            except FilterError as exc:
                return CLOSE_INVALID, _reason(str(exc))

    async def deleted() -> tuple[int, str]:
        await tail.closed.wait()
        return CLOSE_NORMAL, "the tail was deleted"

    async def expired() -> tuple[int, str]:
        await asyncio.sleep(max(0.0, tail.remaining))
        return CLOSE_NORMAL, "the tail expired"

    tasks = [asyncio.ensure_future(job()) for job in (forward, listen, deleted, expired)]
    try:
        finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    first = next(iter(finished))
    if first.cancelled() or first.exception() is not None:
        return CLOSE_GOING_AWAY, ""  # the client went away mid-send, or the store failed: nothing to tell
    return first.result()


def _reason(text: str) -> str:
    encoded = text.encode()[:MAX_CLOSE_REASON]
    return encoded.decode(errors="ignore")
