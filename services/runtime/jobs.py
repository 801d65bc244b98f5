"""The loop every background sweeper and batch job runs: a pass, then straight on while it found a full pass
of work (more is waiting), otherwise a rest; a failed pass (the database away for a moment) is logged and
tried again after the rest, never allowed to end the job."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from . import log

_log = log.get(__name__)


async def repeat(what: str, one_pass: Callable[[], Awaitable[int]], *, rest_s: float, full: int) -> None:
    """Run `one_pass` (which returns how many items it handled) for as long as the service runs."""
    while True:
        try:
            handled = await one_pass()
        except Exception as exc:
            _log.warning(f"{what} failed", error=repr(exc))
            handled = 0
        if handled < full:
            await asyncio.sleep(rest_s)
