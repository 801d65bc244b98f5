"""A continuous pull from a durable JetStream consumer: messages are handed over as soon as they are there.

Why not nats-py's `fetch(n)`: when nothing is waiting it sends a lingering pull for n messages and returns
only once all n arrived or the request expired. At 50 orders/s a consumer fetching 200 then sat ~1 s on
every batch (and on every lone message in a quiet system: a demo order took seconds end to end). Here one
pull request for up to `batch` messages is kept open at a time; the server delivers into an inbox as
messages arrive, `take` returns the first one with everything else already delivered, and the next request
goes out as soon as the current one is used up or has expired. Batches form under load (whatever arrived
while the last batch was handled) and cost no waiting when idle.

The wire protocol is JetStream's documented pull API: a request `{"batch", "expires"}` published to
`$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>` with our inbox as reply subject; status messages 408
(request expired) and 409 (request ended: consumer deleted, limits) end a request, 100 is a heartbeat."""

from __future__ import annotations

import asyncio
import json
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

_API = "$JS.API.CONSUMER.MSG.NEXT"


class ConsumerGone(RuntimeError):
    """The server ended the pull for a reason retrying the same request cannot fix (consumer deleted)."""


class Pull:
    def __init__(self, nc: Client, stream: str, durable: str, *, batch: int, expires_s: float = 5.0):
        self.nc = nc
        self.subject = f"{_API}.{stream}.{durable}"
        self.batch = batch
        self.expires_s = expires_s
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._inbox = nc.new_inbox()
        self._sub: NatsSubscription | None = None
        self._left = 0  # messages the open request may still deliver
        self._open_until = 0.0  # after this the open request is over, whether or not we heard it end
        self._gone: str | None = None
        self._wake = asyncio.Event()  # a message arrived or the open request ended

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message, pending_msgs_limit=-1,
                                            pending_bytes_limit=-1)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_message(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status")
        self._wake.set()
        if status is None:
            self._left -= 1
            self._queue.put_nowait(msg)
            return
        if status == "100":  # idle heartbeat or flow control: the request is still open
            return
        self._left = 0  # 404/408: the request is over; 409: over, and maybe for good
        if status == "409":
            description = (msg.headers or {}).get("Description", "")
            if "deleted" in description.lower():
                self._gone = description

    async def _ensure_request(self) -> None:
        now = time.monotonic()
        if self._left > 0 and now < self._open_until:
            return
        self._left = self.batch
        self._open_until = now + self.expires_s + 1.0
        request = {"batch": self.batch, "expires": int(self.expires_s * 1_000_000_000)}
        await self.nc.publish(self.subject, json.dumps(request).encode(), reply=self._inbox)

    async def take(self, timeout_s: float) -> list[Msg]:
        """The messages delivered so far, at most `batch`, waiting up to `timeout_s` for the first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queue.empty():
            if self._gone:
                raise ConsumerGone(self._gone)
            await self._ensure_request()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                pass
        msgs = []
        while len(msgs) < self.batch and not self._queue.empty():
            msgs.append(self._queue.get_nowait())
        await self._ensure_request()  # keep the next messages coming while this batch is handled
        return msgs
