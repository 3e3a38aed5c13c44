"""The deploy plan: which servers a commit changes, and what becomes of each. Pure.

`plan_push` decides from values only (the commit's manifests and their fingerprints, each
server's release history, which images still exist), so every rule is tested without Docker.
A server is rebuilt only when its fingerprint (the git tree hashes of its folder and build
context, its manifest and its build args) differs from the live release's; an earlier good
release of the same input is reused; one that the watch window rolled back is held back; a
server whose folder is gone from the commit is removed. `plan_release` makes the one-entry
plan of a rollback or a restart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pipeline import buildrules
from pipeline.config.manifest import Manifest, from_data
from pipeline.errors import DeployError
from pipeline.states import ReleaseStatus
from pipeline.store import Release

REMOVE_ALL = "[remove-all]"  # in a commit message: removing every live server of the repo is meant


class Action(StrEnum):
    """What a deploy does with one server."""

    BUILD = "build"  # a new release, built from the commit
    REUSE = "reuse"  # an earlier release's image, started and gated again
    UNCHANGED = "unchanged"
    HELD_BACK = "held back"
    REMOVE = "remove"


@dataclass(frozen=True)
class ReleaseSpec:
    """What one release is made of: enough to build it, start it and record it."""

    manifest: Manifest
    number: int
    image: str
    fingerprint: str
    commit: str
    repo: str

    @property
    def server(self) -> str:
        """The server's name."""
        return self.manifest.name

    @classmethod
    def of(cls, release: Release) -> ReleaseSpec:
        """The spec of a stored release (for rollbacks, restarts and start-up)."""
        manifest = from_data(release.manifest, release.manifest.get("name", release.server))
        return cls(
            manifest, release.number, release.image, release.fingerprint, release.commit_sha, release.repo
        )


@dataclass(frozen=True)
class Entry:
    """One server's line in a plan: the action, the release it concerns, and why."""

    server: str
    action: Action
    why: str
    release: int | None = None
    spec: ReleaseSpec | None = None  # set for BUILD and REUSE


@dataclass(frozen=True)
class Plan:
    """Everything one deploy will do, decided before anything is built."""

    entries: tuple[Entry, ...]

    @property
    def to_prepare(self) -> list[Entry]:
        """Entries that need a candidate container (built or reused)."""
        return [e for e in self.entries if e.action in (Action.BUILD, Action.REUSE)]

    @property
    def removed(self) -> list[str]:
        """Servers whose folder is gone: drained and removed."""
        return [e.server for e in self.entries if e.action is Action.REMOVE]

    @property
    def empty(self) -> bool:
        """Whether the deploy has nothing to do."""
        return not self.to_prepare and not self.removed


def fingerprint(manifest: Manifest, tree_hashes: Sequence[str], build_args: Mapping[str, str]) -> str:
    """The identity of a server's build input: tree hashes, manifest and build args."""
    args = {**build_args, **manifest.build_args}
    parts = [
        *tree_hashes,
        json.dumps(manifest.raw, sort_keys=True, default=str),
        json.dumps(args, sort_keys=True),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def plan_push(
    manifests: Sequence[Manifest],
    fingerprints: Mapping[str, str],
    history: Mapping[str, Sequence[Release]],
    images: Collection[str],
    *,
    repo: str,
    commit: str,
    instance: str,
    remove_all: bool = False,
) -> Plan:
    """Plan a pushed commit of `repo`: `history` holds every server's releases, newest first.

    A commit in which no manifest was found would remove every live server of the repo: that is
    refused (it is far more often a glob that matches nothing) unless `remove_all` says it is meant.
    """
    entries = [
        _entry(m, fingerprints[m.name], history.get(m.name, ()), images, repo, commit, instance)
        for m in manifests
    ]
    names = {m.name for m in manifests}
    ours = sorted(s for s, rs in history.items() if (live := _live(rs)) is not None and live.repo == repo)
    if not manifests and ours and not remove_all:
        raise DeployError(
            f"no server manifest was found in this commit, so it would remove every live server of "
            f"{repo} ({', '.join(ours)}); if the manifest globs in deploy.yaml (repos[].manifests) are "
            f"right and you mean to remove them all, push a commit whose message says {REMOVE_ALL}"
        )
    for server, releases in sorted(history.items()):
        live = _live(releases)
        if live is not None and live.repo == repo and server not in names:
            entries.append(Entry(server, Action.REMOVE, "its folder is gone → drain and remove", live.number))
    return Plan(tuple(entries))


def plan_release(release: Release, why: str) -> Plan:
    """The plan of a rollback or restart: start `release` again through the same gate and swap."""
    return Plan((Entry(release.server, Action.REUSE, why, release.number, ReleaseSpec.of(release)),))


def _entry(
    manifest: Manifest,
    print_: str,
    releases: Sequence[Release],
    images: Collection[str],
    repo: str,
    commit: str,
    instance: str,
) -> Entry:
    name = manifest.name
    live = _live(releases)
    if live is not None and live.repo != repo:
        raise DeployError(f"server {name!r} is already deployed from repo {live.repo!r}; rename one of them")
    same = [r for r in releases if r.fingerprint == print_]
    held = next((r for r in same if r.status == ReleaseStatus.ROLLED_BACK), None)
    if held is not None:
        why = (
            f"held back — r{held.number}, built from this same input, was rolled back "
            "automatically; change the server to deploy it again"
        )
        return Entry(name, Action.HELD_BACK, why, held.number)
    if live is not None and live.fingerprint == print_:
        return Entry(name, Action.UNCHANGED, f"unchanged (live r{live.number})", live.number)
    earlier = next(
        (
            r
            for r in same
            if r.status in (ReleaseStatus.PREVIOUS, ReleaseStatus.RETIRED) and r.image in images
        ),
        None,
    )
    if earlier is not None:
        spec = ReleaseSpec(manifest, earlier.number, earlier.image, print_, commit, repo)
        why = f"same as earlier r{earlier.number}; reusing its image"
        return Entry(name, Action.REUSE, why, earlier.number, spec)
    number = max((r.number for r in releases), default=0) + 1
    image = buildrules.server_image(name, number, instance)
    why = ("new server" if live is None else f"changed since r{live.number}") + f" → r{number}"
    return Entry(name, Action.BUILD, why, number, ReleaseSpec(manifest, number, image, print_, commit, repo))


def _live(releases: Sequence[Release]) -> Release | None:
    return next((r for r in releases if r.status == ReleaseStatus.LIVE), None)
