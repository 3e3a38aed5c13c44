"""Who may call which server: project API keys, per-key rate limits, the Origin allow-list.

Keys are shown once at creation; only their SHA-256 is stored. A key maps to a project from
deploy.yaml, whose `servers` list bounds what the key reaches.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeline.config.settings import Project, Settings
from pipeline.store import Store

KEY_PREFIX = "cmcp_"
# What a client without a usable key is told, in the body and in WWW-Authenticate (RFC 6750 allows
# neither a quote nor a backslash in error_description).
KEY_HOWTO = (
    "a project key is needed: send it as `Authorization: Bearer <key>`; "
    "the operator of this provider makes one with `central-mcp keys create <project>`"
)
KEY_CACHE_SECONDS = 5.0
OPEN_ACCESS = "open"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the key's id and its project (OPEN_ACCESS without projects)."""

    key_id: str
    project: Project | None


OPEN_CALLER = Caller(OPEN_ACCESS, None)  # immutable: one for every request when access is open
AGGREGATE_ID = "aggregate"  # the key id of the aggregate's own requests (its list fetches)
AGGREGATE_CALLER = Caller(AGGREGATE_ID, None)


@dataclass(frozen=True)
class Denied:
    """Why a request is refused: HTTP status, message, and extra headers."""

    status: int
    message: str
    headers: dict[str, str]


def create_key(store: Store, settings: Settings, project: str) -> str:
    """Create a key for `project`; return it (the only time it is seen in clear)."""
    if settings.project(project) is None:
        known = ", ".join(p.name for p in settings.projects) or "none"
        raise ValueError(f"no project {project!r} in deploy.yaml (projects: {known})")
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    store.add_key(token[: len(KEY_PREFIX) + 8], project, _digest(token))
    return token


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Gatekeeper:
    """Authenticates, authorizes and rate-limits proxy requests."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._cache: dict[str, tuple[float, tuple[str, str] | None]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        # The aggregate endpoint's own token, for the lists it caches for every project: it lives in
        # this process's memory only, and the aggregate shows a project only what its key reaches.
        self.internal_token = secrets.token_urlsafe(32)
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Use `settings` (projects, rate limits, origins) from now on: a reload of deploy.yaml."""
        origins = {_origin(o) for o in settings.proxy.allowed_origins} | {_origin(settings.base_url)}
        self._origins = origins - {""}  # an entry without a scheme lets nothing in
        self.settings = settings

    @property
    def required(self) -> bool:
        """Whether keys are required (deploy.yaml lists projects)."""
        return bool(self.settings.projects)

    def origin_allowed(self, origin: str) -> bool:
        """Whether a browser Origin may call the proxy."""
        return _origin(origin) in self._origins

    def check(
        self, authorization: str, origin: str, server: str, access: tuple[str, ...] = ("all",)
    ) -> Caller | Denied:
        """Return the caller, or why the request is denied (`access`: the manifest's list)."""
        if origin and not self.origin_allowed(origin):
            return Denied(403, f"origin {origin!r} is not allowed", {})
        if not self.required:
            return OPEN_CALLER
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("missing bearer token", "")
        found = self._lookup(token.strip())
        if found is None:
            if hmac.compare_digest(token.strip().encode(), self.internal_token.encode()):
                return AGGREGATE_CALLER
            return _unauthorized("unknown or revoked API key", "invalid_token")
        key_id, project_name = found
        project = self.settings.project(project_name)
        if project is None:
            return Denied(403, f"project {project_name!r} is no longer configured", {})
        if not project.may_use(server) or ("all" not in access and project.name not in access):
            return Denied(403, f"project {project.name!r} may not use server {server!r}", {})
        wait = self._take(key_id, project)
        if wait > 0:
            return Denied(429, "rate limit exceeded", {"Retry-After": str(math.ceil(wait))})
        return Caller(key_id, project)

    def identify(self, authorization: str) -> Caller | Denied:
        """Return the key's caller without a server scope or rate limit (for the registry)."""
        scheme, _, token = authorization.partition(" ")
        found = self._lookup(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if found is None:
            return _unauthorized("unknown or revoked API key", "invalid_token")
        project = self.settings.project(found[1])
        if project is None:
            return Denied(403, f"project {found[1]!r} is no longer configured", {})
        return Caller(found[0], project)

    def limit(self, caller: Caller) -> Denied | None:
        """Take a token from the caller's rate-limit bucket (a request the aggregate answers itself);
        the 429 when none is left."""
        if caller.project is None:
            return None
        wait = self._take(caller.key_id, caller.project)
        return Denied(429, "rate limit exceeded", {"Retry-After": str(math.ceil(wait))}) if wait > 0 else None

    def reaches(self, caller: Caller, server: str, access: tuple[str, ...]) -> bool:
        """Whether `caller` may use `server` (whose manifest allows `access`), as `check` decides."""
        project = caller.project
        if project is None:
            return True
        return project.may_use(server) and ("all" in access or project.name in access)

    def _lookup(self, token: str) -> tuple[str, str] | None:
        digest = _digest(token)
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        found = self.store.key_by_hash(digest)
        if found is not None:
            self._cache[digest] = (now, found)
        else:
            self._cache.pop(digest, None)
        return found

    def _take(self, key_id: str, project: Project) -> float:
        """Take a token from the key's bucket; return 0, or the seconds until one is free."""
        rate = project.per_minute / 60.0
        now = self.clock()
        tokens, last = self._buckets.get(key_id, (float(project.burst), now))
        tokens = min(float(project.burst), tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate
        self._buckets[key_id] = (tokens - 1.0, now)
        return 0.0


def _unauthorized(problem: str, error: str) -> Denied:
    """A 401 whose body and Bearer challenge say what was wrong and how to get a key (`error`: the
    RFC 6750 code, none when no credentials came at all)."""
    code = f'error="{error}", ' if error else ""
    challenge = f'Bearer realm="central-mcp", {code}error_description="{problem}; {KEY_HOWTO}"'
    return Denied(401, f"{problem}; {KEY_HOWTO}", {"WWW-Authenticate": challenge})


def _origin(url: str) -> str:
    """`scheme://host[:port]`, lower case; "" for what has no scheme or host (an opaque `null`, or an
    allow-list entry written as a bare host), which matches nothing."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""
