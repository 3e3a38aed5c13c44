"""SQLite state: deploys, their events, releases per server. WAL mode; one lock per process."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.errors import DatabaseDamaged, StateError

# SQLITE_CORRUPT and SQLITE_NOTADB: the file is damaged past its header, not busy or full.
DATABASE = "central-mcp.db"  # the store's file in the state directory
CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
MAX_SURFACE_BYTES = 8 * 1024 * 1024  # one release's tools, prompts and resources as JSON

SCHEMA = """
CREATE TABLE IF NOT EXISTS deploys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL, repo TEXT NOT NULL, ref TEXT NOT NULL, commit_sha TEXT NOT NULL,
    author TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL, error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    steps TEXT NOT NULL DEFAULT '[]', servers TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS events (
    deploy_id INTEGER NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    kind TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY (deploy_id, seq)
);
CREATE TABLE IF NOT EXISTS releases (
    server TEXT NOT NULL, number INTEGER NOT NULL, repo TEXT NOT NULL, commit_sha TEXT NOT NULL,
    fingerprint TEXT NOT NULL, image TEXT NOT NULL, version TEXT NOT NULL,
    status TEXT NOT NULL, deploy_id INTEGER, container_id TEXT NOT NULL DEFAULT '',
    host_port INTEGER NOT NULL DEFAULT 0, path TEXT NOT NULL DEFAULT '/mcp',
    tools TEXT NOT NULL DEFAULT '[]', manifest TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL, live_at REAL,
    PRIMARY KEY (server, number)
);
CREATE TABLE IF NOT EXISTS surfaces (
    server TEXT NOT NULL, number INTEGER NOT NULL, lists TEXT NOT NULL, PRIMARY KEY (server, number)
);
CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY, deploy_id INTEGER NOT NULL, received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL, revoked_at REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, server TEXT NOT NULL, container_id TEXT NOT NULL, key_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idle (
    server TEXT PRIMARY KEY, number INTEGER NOT NULL, since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    key_id TEXT NOT NULL, project TEXT NOT NULL, server TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0, updated_at REAL NOT NULL,
    PRIMARY KEY (key_id, server)
);
"""


@dataclass(frozen=True)
class Release:
    """One built version of one server; `status` is live, previous, retired or failed."""

    server: str
    number: int
    repo: str
    commit_sha: str
    fingerprint: str
    image: str
    version: str
    status: str
    deploy_id: int | None
    container_id: str
    host_port: int
    path: str
    tools: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    live_at: float | None = None

    @property
    def name(self) -> str:
        """The release's short name, e.g. r3."""
        return f"r{self.number}"

    @property
    def placement(self) -> Placement:
        """Where this release runs (or ran)."""
        return Placement(self.server, self.number, self.container_id, self.host_port)


class Placement(NamedTuple):
    """Where one release of a server runs: the container and its loopback port."""

    server: str
    number: int
    container_id: str
    host_port: int


class SessionRow(NamedTuple):
    """An MCP session as stored: the container that issued it and the API key it was issued to."""

    id: str
    server: str
    container_id: str
    key_id: str


@dataclass(frozen=True)
class Deploy:
    """A deploy record as stored."""

    id: int
    source: str
    repo: str
    ref: str
    commit_sha: str
    author: str
    message: str
    status: str
    error: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    steps: list[dict[str, Any]]
    servers: dict[str, Any]


class Store:
    """The provider's SQLite database."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.parent.chmod(0o700)  # the state (keys' hashes, deploy logs, secrets.env) is the owner's only
        except OSError as exc:
            raise StateError(
                f"the state directory {path.parent} cannot be created ({exc.strerror}); "
                "check its parent's owner and permissions, or choose another with state_dir in deploy.yaml "
                "or CENTRAL_MCP_STATE_DIR"
            ) from exc
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
            for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                if file.exists():
                    file.chmod(0o600)
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"the database {path} cannot be opened ({exc}); move it aside to "
                "start with an empty one, or restore it from a backup"
            ) from exc

    def verify(self) -> None:
        """Raise DatabaseDamaged unless SQLite finds every page of the database sound (a quick check)."""
        with self._reading() as db:
            found = str(db.execute("PRAGMA quick_check(1)").fetchone()[0])
        if found != "ok":
            raise DatabaseDamaged(self._damaged(" ".join(found.split())))  # SQLite's first finding, one line

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._reading() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; a damaged file becomes one DatabaseDamaged naming it."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in CORRUPT_CODES:
                    raise  # a full disk or a lock is not damage: callers handle sqlite3.Error
                raise DatabaseDamaged(self._damaged(str(exc))) from exc

    def _damaged(self, why: str) -> str:
        return (
            f"the database {self.path} is damaged ({why}); with serve stopped, move the file aside to start "
            "with an empty one, or restore it from a backup"
        )

    def heartbeat(self) -> None:
        """Write one row: raises sqlite3.Error when the database cannot be written (a full disk)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO heartbeat (id, at) VALUES (1, ?)", (time.time(),))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    # deploys -----------------------------------------------------------------------------
    def create_deploy(
        self, *, source: str, repo: str, ref: str, commit_sha: str, author: str = "", message: str = ""
    ) -> int:
        """Record a queued deploy and return its id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO deploys (source, repo, ref, commit_sha, author, message, status, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                (source, repo, ref, commit_sha, author, message, time.time()),
            )
            return int(cur.lastrowid or 0)

    def update_deploy(self, deploy_id: int, **fields: Any) -> None:
        """Set fields of a deploy (JSON fields are encoded)."""
        for key in ("steps", "servers"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        columns = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE deploys SET {columns} WHERE id = ?", (*fields.values(), deploy_id))

    def deploy(self, deploy_id: int) -> Deploy | None:
        """Return one deploy, or None."""
        with self._reading() as db:
            row = db.execute("SELECT * FROM deploys WHERE id = ?", (deploy_id,)).fetchone()
        return _deploy(row) if row else None

    def deploys(
        self, limit: int = 50, offset: int = 0, status: str | None = None, server: str | None = None
    ) -> list[Deploy]:
        """Return deploys, newest first, optionally only of one status or touching one server."""
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if server:
            where.append("EXISTS (SELECT 1 FROM json_each(deploys.servers) WHERE json_each.key = ?)")
            args.append(server)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._reading() as db:
            rows = db.execute(
                f"SELECT * FROM deploys {clause} ORDER BY id DESC LIMIT ? OFFSET ?", (*args, limit, offset)
            ).fetchall()
        return [_deploy(r) for r in rows]

    def abandon_active(self, reason: str) -> list[int]:
        """Mark queued or running deploys abandoned (after a crash); return their ids."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM deploys WHERE status IN ('queued', 'running')")]
            db.execute(
                "UPDATE deploys SET status = 'abandoned', error = ?, finished_at = ? "
                "WHERE status IN ('queued', 'running')",
                (reason, time.time()),
            )
        return ids

    def add_event(self, deploy_id: int, seq: int, kind: str, text: str) -> None:
        """Append one event (a log line or a step change) to a deploy."""
        self.add_events(deploy_id, [(seq, time.time(), kind, text)])

    def add_events(self, deploy_id: int, events: Sequence[tuple[int, float, str, str]]) -> None:
        """Append (seq, ts, kind, text) events to a deploy in one transaction."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO events (deploy_id, seq, ts, kind, text) VALUES (?, ?, ?, ?, ?)",
                [(deploy_id, *event) for event in events],
            )

    def events(self, deploy_id: int, after: int = 0) -> list[tuple[int, float, str, str]]:
        """Return (seq, ts, kind, text) of a deploy's events after `after`."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT seq, ts, kind, text FROM events WHERE deploy_id = ? AND seq > ? ORDER BY seq",
                (deploy_id, after),
            ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # releases ----------------------------------------------------------------------------
    def next_release_number(self, server: str) -> int:
        """Return the next release number for a server."""
        with self._reading() as db:
            row = db.execute("SELECT MAX(number) FROM releases WHERE server = ?", (server,)).fetchone()
        return int(row[0] or 0) + 1

    def add_release(self, release: Release) -> None:
        """Record a release (usually as a candidate that passed its gate)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO releases (server, number, repo, commit_sha, fingerprint, image, version, "
                "status, deploy_id, container_id, host_port, path, tools, manifest, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    release.server,
                    release.number,
                    release.repo,
                    release.commit_sha,
                    release.fingerprint,
                    release.image,
                    release.version,
                    release.status,
                    release.deploy_id,
                    release.container_id,
                    release.host_port,
                    release.path,
                    json.dumps(release.tools),
                    json.dumps(release.manifest),
                    time.time(),
                ),
            )

    def commit_swap(
        self,
        live: Sequence[Placement],
        removed: Sequence[str],
        rolled_back: Sequence[tuple[str, int]] = (),
    ) -> None:
        """In one transaction: make `live` the live releases, demote the old ones, retire the
        removed servers, and mark `rolled_back` (server, number) releases."""
        now = time.time()
        with self._tx() as db:
            for server, number, container_id, host_port in live:
                current = db.execute(
                    "SELECT number FROM releases WHERE server = ? AND status = 'live'", (server,)
                ).fetchone()
                if current is None or current[0] != number:  # a restart keeps the history as it is
                    db.execute(
                        "UPDATE releases SET status = 'retired' WHERE server = ? AND status = 'previous'",
                        (server,),
                    )
                    db.execute(
                        "UPDATE releases SET status = 'previous' WHERE server = ? AND status = 'live'",
                        (server,),
                    )
                db.execute(
                    "UPDATE releases SET status = 'live', live_at = ?, container_id = ?, "
                    "host_port = ? WHERE server = ? AND number = ?",
                    (now, container_id, host_port, server, number),
                )
            for server in removed:
                db.execute(
                    "UPDATE releases SET status = 'retired' WHERE server = ? AND status IN "
                    "('live', 'previous')",
                    (server,),
                )
            for server, number in rolled_back:
                db.execute(
                    "UPDATE releases SET status = 'rolled-back' WHERE server = ? AND number = ?",
                    (server, number),
                )

    def set_container(self, server: str, number: int, container_id: str, host_port: int) -> None:
        """Record where a release now runs."""
        with self._tx() as db:
            db.execute(
                "UPDATE releases SET container_id = ?, host_port = ? WHERE server = ? AND number = ?",
                (container_id, host_port, server, number),
            )

    def set_idle(self, server: str, number: int, since: float) -> None:
        """Record that a server's live release was stopped for want of use (scale to zero)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO idle (server, number, since) VALUES (?, ?, ?)",
                (server, number, since),
            )

    def clear_idle(self, server: str) -> None:
        """Record that a server runs again (woken, or a deploy made a release live)."""
        with self._tx() as db:
            db.execute("DELETE FROM idle WHERE server = ?", (server,))

    def idle(self) -> dict[str, int]:
        """The servers stopped for want of use, with the live release each will start again."""
        with self._reading() as db:
            return {row[0]: int(row[1]) for row in db.execute("SELECT server, number FROM idle").fetchall()}

    def set_release_status(self, server: str, number: int, status: str) -> None:
        """Set one release's status."""
        with self._tx() as db:
            db.execute(
                "UPDATE releases SET status = ? WHERE server = ? AND number = ?", (status, server, number)
            )

    def live_releases(self) -> list[Release]:
        """Return every live release, by server name."""
        return self._releases("WHERE status = 'live' ORDER BY server", ())

    def releases(self, server: str) -> list[Release]:
        """Return a server's releases, newest first."""
        return self._releases("WHERE server = ? ORDER BY number DESC", (server,))

    def release(self, server: str, number: int) -> Release | None:
        """Return one release, or None."""
        found = self._releases("WHERE server = ? AND number = ?", (server, number))
        return found[0] if found else None

    def all_releases(self) -> list[Release]:
        """Every release of every server."""
        return self._releases("ORDER BY server, number DESC", ())

    def prune_deploys(self, keep: int, older_than: float) -> int:
        """Delete finished deploys beyond the newest `keep` or created before `older_than`."""
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM deploys WHERE status NOT IN ('queued', 'running') AND (id NOT IN "
                    "(SELECT id FROM deploys ORDER BY id DESC LIMIT ?) OR created_at < ?)",
                    (keep, older_than),
                )
            ]
            for deploy_id in ids:
                db.execute("DELETE FROM events WHERE deploy_id = ?", (deploy_id,))
                db.execute("DELETE FROM deploys WHERE id = ?", (deploy_id,))
        return len(ids)

    def previous_tools(self, server: str, number: int) -> set[str] | None:
        """Tool names of the newest good release before `number` (None for a first release)."""
        found = self._releases(
            "WHERE server = ? AND number < ? AND status IN ('live', 'previous', "
            "'retired') ORDER BY number DESC LIMIT 1",
            (server, number),
        )
        return {str(t.get("name")) for t in found[0].tools} if found else None

    def save_surface(self, server: str, number: int, lists: dict[str, Any]) -> None:
        """Keep a release's tools, prompts and resources (as its gate read them: bounded by
        proxy.max_handshake, and refused past MAX_SURFACE_BYTES)."""
        text = json.dumps(lists)
        if len(text) > MAX_SURFACE_BYTES:
            raise StateError(
                f"{server} r{number}: its lists are {len(text)} bytes as JSON, over the "
                f"{MAX_SURFACE_BYTES} kept per release"
            )
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO surfaces (server, number, lists) VALUES (?, ?, ?)",
                (server, number, text),
            )

    def surface(self, server: str, number: int) -> dict[str, Any] | None:
        """A release's lists as kept (None when it has none: a release older than this table)."""
        with self._reading() as db:
            row = db.execute(
                "SELECT lists FROM surfaces WHERE server = ? AND number = ?", (server, number)
            ).fetchone()
        if row is None:
            return None
        found: dict[str, Any] = json.loads(row[0])
        return found

    def _releases(self, where: str, args: tuple[Any, ...]) -> list[Release]:
        with self._reading() as db:
            rows = db.execute(f"SELECT * FROM releases {where}", args).fetchall()
        return [_release(r) for r in rows]

    # webhook deliveries ---------------------------------------------------------------------
    def delivery(self, delivery_id: str) -> int | None:
        """Return the deploy a delivery id already made, or None."""
        with self._reading() as db:
            row = db.execute("SELECT deploy_id FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        return int(row[0]) if row else None

    def add_delivery(self, delivery_id: str, deploy_id: int) -> None:
        """Remember which deploy a delivery made."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO deliveries (id, deploy_id, received_at) VALUES (?, ?, ?)",
                (delivery_id, deploy_id, time.time()),
            )

    # API keys and usage ----------------------------------------------------------------------
    def add_key(self, key_id: str, project: str, digest: str) -> None:
        """Store a new API key's hash."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO api_keys (id, project, hash, created_at) VALUES (?, ?, ?, ?)",
                (key_id, project, digest, time.time()),
            )

    def key_by_hash(self, digest: str) -> tuple[str, str] | None:
        """Return (key id, project) of an unrevoked key with this hash."""
        with self._reading() as db:
            row = db.execute(
                "SELECT id, project FROM api_keys WHERE hash = ? AND revoked_at IS NULL", (digest,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def api_keys(self) -> list[dict[str, Any]]:
        """Return every key's id, project, created and revoked times (never the hash)."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT id, project, created_at, revoked_at FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [dict(r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; return whether one was revoked."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            return cur.rowcount > 0

    def add_usage(self, rows: list[tuple[str, str, str, int, int, float]]) -> None:
        """Add (key id, project, server, requests, errors, latency ms) to the counters."""
        now = time.time()
        with self._tx() as db:
            for key_id, project, server, requests, errors, latency in rows:
                db.execute(
                    "INSERT INTO usage (key_id, project, server, requests, errors, latency_ms, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_id, server) DO UPDATE "
                    "SET requests = requests + excluded.requests, errors = errors + excluded.errors, "
                    "latency_ms = latency_ms + excluded.latency_ms, updated_at = excluded.updated_at",
                    (key_id, project, server, requests, errors, latency, now),
                )

    def usage(self) -> list[dict[str, Any]]:
        """Return the usage counters per key and server."""
        with self._reading() as db:
            rows = db.execute("SELECT * FROM usage ORDER BY project, server").fetchall()
        return [dict(r) for r in rows]

    # sessions ---------------------------------------------------------------------------------
    def save_sessions(self, opened: Sequence[SessionRow], ended: Sequence[str]) -> None:
        """Record sessions the proxy opened and forget those that ended, in one transaction."""
        if not opened and not ended:
            return
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)", opened)
            db.executemany("DELETE FROM sessions WHERE id = ?", [(sid,) for sid in ended])

    def sessions(self) -> list[SessionRow]:
        """Every stored session."""
        with self._lock:
            rows = self._db.execute("SELECT id, server, container_id, key_id FROM sessions").fetchall()
        return [SessionRow(*row) for row in rows]


def _deploy(row: sqlite3.Row) -> Deploy:
    return Deploy(
        id=row["id"],
        source=row["source"],
        repo=row["repo"],
        ref=row["ref"],
        commit_sha=row["commit_sha"],
        author=row["author"],
        message=row["message"],
        status=row["status"],
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        steps=json.loads(row["steps"]),
        servers=json.loads(row["servers"]),
    )


def _release(row: sqlite3.Row) -> Release:
    return Release(
        server=row["server"],
        number=row["number"],
        repo=row["repo"],
        commit_sha=row["commit_sha"],
        fingerprint=row["fingerprint"],
        image=row["image"],
        version=row["version"],
        status=row["status"],
        deploy_id=row["deploy_id"],
        container_id=row["container_id"],
        host_port=row["host_port"],
        path=row["path"],
        tools=json.loads(row["tools"]),
        manifest=json.loads(row["manifest"]),
        created_at=row["created_at"],
        live_at=row["live_at"],
    )
