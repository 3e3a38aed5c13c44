"""Idle sessions end: here, and on the container that issued them.

Clients such as mcp-remote (Claude Desktop's bridge) never send DELETE, so without this their
sessions would stay in the proxy's table, and in the container's memory, until the next deploy. A
session with no request in flight (an open GET stream is one) for `proxy.session_idle_timeout` is
forgotten, its id answers 404 from then on, and its container gets the DELETE the client never sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pipeline.proxy.pool import Pool
from pipeline.proxy.router import Router, Upstream

log = logging.getLogger("central-mcp")
CHECKS_PER_TIMEOUT = 4  # an idle session ends at most a quarter of its timeout late
MIN_INTERVAL = 0.05
MAX_INTERVAL = 30.0
END_UPSTREAM_TIMEOUT = 5.0  # for the DELETE that ends an expired session on its container


async def expire_sessions(router: Router, pool_for: Callable[[Upstream], Pool], timeout: float) -> None:
    """Until cancelled: end the sessions idle for `timeout` seconds, here and on their containers
    (reached through the pool `pool_for` names: a remote's is checked and verified)."""
    interval = min(max(timeout / CHECKS_PER_TIMEOUT, MIN_INTERVAL), MAX_INTERVAL)
    while True:
        await asyncio.sleep(interval)
        ended = router.expire_idle(time.monotonic() - timeout)
        ends = [(u, s.id) for s in ended if (u := router.upstream_of(s)) is not None]
        if ends:
            await asyncio.gather(*(end_upstream(pool_for(u), u, sid) for u, sid in ends))


async def end_upstream(pool: Pool, upstream: Upstream, session_id: str) -> None:
    """DELETE a session on the container that issued it (bounded in time; a failure is logged), with
    the loopback Host every forwarded request carries (an SDK server's guard answers 421 to another)."""
    request = (
        f"DELETE {upstream.path or '/'} HTTP/1.1\r\nhost: {upstream.authority}\r\n"
        f"mcp-session-id: {session_id}\r\ncontent-length: 0\r\n"
    ).encode("latin-1")
    request += (upstream.remote.headers if upstream.remote is not None else b"") + b"\r\n"
    try:
        async with asyncio.timeout(END_UPSTREAM_TIMEOUT):
            conn = await pool.request(upstream.host, upstream.port, "DELETE", request)
            try:
                await conn.read_whole()  # None once too large to hold: then it is closed
            finally:
                conn.release()
    except (OSError, TimeoutError) as exc:
        log.info("ending an expired session on %s failed: %s", upstream.server, exc.__class__.__name__)
