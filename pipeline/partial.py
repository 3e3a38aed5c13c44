"""What a push unpacks: its manifests, and the folders of the servers whose build input changed.

A push's snapshot is planned from git tree hashes before anything but the manifests is unpacked
(source.take's `select`): a server whose fingerprint (plan.fingerprint: its folder's and build
context's tree hashes, manifest and build args) is the one of its live release is unchanged, so
none of its files are needed; the folder and build context of every other server are unpacked,
within the snapshot bounds. A docs-only push in a repository full of vendored files unpacks a few
manifests.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipeline import stdio
from pipeline.config.manifest import Manifest, check_tree
from pipeline.config.settings import Repo, Settings
from pipeline.plan import fingerprint
from pipeline.source import Select, Snapshot
from pipeline.store import DATABASE, Store


def inputs(m: Manifest, snapshot: Snapshot) -> list[str]:
    """What a server's build is made of besides its manifest: its folder's and its context's trees,
    and for a stdio server the bridge the provider layers over it."""
    trees = [snapshot.tree_hash(m.folder), snapshot.tree_hash(m.context)]
    return [*trees, f"bridge:{stdio.bridge_version()}"] if stdio.is_stdio(m) else trees


def needed(snapshot: Snapshot, settings: Settings, repo: Repo, live: Mapping[str, str]) -> list[str]:
    """The folders to unpack of a manifests-only `snapshot`: those of every server whose fingerprint
    is not its live release's (`live`: server -> fingerprint)."""
    report = check_tree(snapshot.root, settings, repo.manifests, repo, held=lambda _folder: False)
    folders: list[str] = []
    for m in report.manifests:  # a faulty manifest needs no files: the deploy reports it anyway
        if live.get(m.name) != fingerprint(m, inputs(m, snapshot), settings.build_args):
            folders += [m.folder, m.context]
    return folders


def selector(settings: Settings, repo: Repo, live: Mapping[str, str]) -> Select:
    """source.take's `select` for a push of `repo`."""
    return lambda snapshot: needed(snapshot, settings, repo, live)


def live_prints(settings: Settings) -> dict[str, str]:
    """Every live release's fingerprint, by server, read from the state directory's database (the
    pre-receive hook has no store open; the serve process's is shared by its threads)."""
    store = Store(Path(settings.state_dir) / DATABASE)
    try:
        return {r.server: r.fingerprint for r in store.live_releases()}
    finally:
        store.close()
