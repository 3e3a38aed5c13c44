"""Words for states: what a release and a deploy can be, and where a deploy comes from.

`StrEnum`s, so they compare equal to the strings SQLite, JSON and the pages hold.
"""

from __future__ import annotations

from enum import StrEnum


class ReleaseStatus(StrEnum):
    """Where one built version of a server stands."""

    CANDIDATE = "candidate"  # built, started and gated; not yet swapped in
    LIVE = "live"
    PREVIOUS = "previous"  # the release before the live one: the rollback target
    RETIRED = "retired"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"  # made live, then rolled back by the watch window


class ServerStatus(StrEnum):
    """How a live server stands between deploys (the monitor's word, shown on the pages)."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    FAILING = "failing"
    DOWN = "down"
    IDLE = "idle"  # scale.min 0: stopped for want of use; its first request starts it again


class DeployStatus(StrEnum):
    """Where one deploy stands."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABANDONED = "abandoned"  # the provider stopped while it ran


class DeploySource(StrEnum):
    """What asked for a deploy."""

    PUSH = "push"  # git push into the VM's bare repo (pre-receive hook)
    WEBHOOK = "webhook"
    CLI = "cli"  # `central-mcp deploy`
    ROLLBACK = "rollback"  # `central-mcp rollback`
    RESTART = "restart"  # the monitor replacing a failing container
    AUTO_ROLLBACK = "auto-rollback"  # the watch window rolling a bad release back


ACTIVE = (DeployStatus.QUEUED, DeployStatus.RUNNING)
FINISHED = (DeployStatus.SUCCEEDED, DeployStatus.FAILED, DeployStatus.CANCELED, DeployStatus.ABANDONED)
PUSHED = (DeploySource.PUSH, DeploySource.WEBHOOK, DeploySource.CLI)  # new code, watched after going live


class ServerOutcome(StrEnum):
    """What one deploy did with one server (shown on the deploy's page)."""

    UNCHANGED = "unchanged"
    HELD_BACK = "held back"
    GATED = "gated"  # passed its gate; the deploy failed before the swap
    FAILED = "failed"
    SWAPPED = "swapped"
    CANARY = "canary"  # live beside the stable release, taking a share of new traffic
    REMOVED = "removed"
