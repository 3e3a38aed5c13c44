"""pipeline/plan.py: what a pushed commit changes, decided from values alone (no Docker, no git)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from pipeline.config.manifest import Manifest, from_data
from pipeline.errors import DeployError
from pipeline.plan import Action, Plan, fingerprint, plan_push, plan_release
from pipeline.states import ReleaseStatus
from pipeline.store import Release

REPO = "owner/PROJECTS_all"
COMMIT = "c" * 40
INSTANCE = "i0"


def manifest(name: str, **extra: Any) -> Manifest:
    """A valid manifest of server `name` in servers/<name>."""
    data = {
        "name": name,
        "version": "1.0.0",
        "description": f"{name} server",
        "transport": "streamable-http",
        "run": {"port": 8080},
        **extra,
    }
    return from_data(data, f"servers/{name}")


def release(server: str, number: int, status: ReleaseStatus, print_: str, repo: str = REPO) -> Release:
    """A stored release of `server` built from input `print_`."""
    return Release(
        server=server,
        number=number,
        repo=repo,
        commit_sha=f"{number:040d}",
        fingerprint=print_,
        image=f"central-mcp-server/{server}:r{number}-{INSTANCE}",
        version="1.0.0",
        status=status,
        deploy_id=number,
        container_id=f"c{number}",
        host_port=5000 + number,
        path="/mcp",
        manifest=dict(manifest(server).raw),
    )


def plan(
    manifests: list[Manifest],
    prints: dict[str, str],
    history: dict[str, list[Release]],
    images: Iterable[str] = (),
) -> Plan:
    """Plan a push of `manifests` with the given fingerprints and release history."""
    return plan_push(manifests, prints, history, set(images), repo=REPO, commit=COMMIT, instance=INSTANCE)


def test_a_new_server_is_built_as_r1_with_an_instance_scoped_image() -> None:
    """A server with no history is built as r1, its image tagged with the release and instance."""
    result = plan([manifest("alpha")], {"alpha": "f1"}, {})

    (entry,) = result.entries
    assert (entry.action, entry.release, entry.why) == (Action.BUILD, 1, "new server → r1")
    assert entry.spec is not None
    assert (entry.spec.image, entry.spec.commit, entry.spec.repo) == (
        f"central-mcp-server/alpha:r1-{INSTANCE}",
        COMMIT,
        REPO,
    )
    assert result.to_prepare == [entry] and not result.empty


def test_a_server_matching_its_live_release_is_unchanged() -> None:
    """The same fingerprint as the live release means nothing to build for that server."""
    history = {"alpha": [release("alpha", 2, ReleaseStatus.LIVE, "f2")]}

    result = plan([manifest("alpha")], {"alpha": "f2"}, history)

    assert [(e.action, e.why) for e in result.entries] == [(Action.UNCHANGED, "unchanged (live r2)")]
    assert result.empty


def test_a_changed_server_gets_the_next_number_after_every_release_even_failed_ones() -> None:
    """A change is built as max(number)+1, so a failed r3 is never reused as a number."""
    history = {
        "alpha": [
            release("alpha", 3, ReleaseStatus.FAILED, "f3"),
            release("alpha", 2, ReleaseStatus.LIVE, "f2"),
        ]
    }

    (entry,) = plan([manifest("alpha")], {"alpha": "f4"}, history).entries

    assert (entry.action, entry.release, entry.why) == (Action.BUILD, 4, "changed since r2 → r4")


def test_an_earlier_good_release_of_the_same_input_is_reused_when_its_image_exists() -> None:
    """Going back to an input deployed before restarts that release's image instead of building."""
    old = release("alpha", 1, ReleaseStatus.PREVIOUS, "f1")
    history = {"alpha": [release("alpha", 2, ReleaseStatus.LIVE, "f2"), old]}

    reused = plan([manifest("alpha")], {"alpha": "f1"}, history, images=[old.image]).entries[0]
    pruned = plan([manifest("alpha")], {"alpha": "f1"}, history, images=[]).entries[0]

    assert (reused.action, reused.release) == (Action.REUSE, 1)
    assert reused.spec is not None and reused.spec.image == old.image
    assert (pruned.action, pruned.release) == (Action.BUILD, 3)


def test_an_input_the_watch_window_rolled_back_is_held_back() -> None:
    """The exact input of a release that was rolled back automatically is not deployed again."""
    history = {
        "alpha": [
            release("alpha", 2, ReleaseStatus.ROLLED_BACK, "bad"),
            release("alpha", 1, ReleaseStatus.LIVE, "good"),
        ]
    }

    result = plan([manifest("alpha")], {"alpha": "bad"}, history, images=["any"])

    (entry,) = result.entries
    assert (entry.action, entry.release) == (Action.HELD_BACK, 2)
    assert "rolled back automatically" in entry.why
    assert result.empty


def test_a_live_server_whose_folder_is_gone_is_removed_but_another_repos_is_not() -> None:
    """Only servers of the pushed repo that are missing from the commit are removed."""
    history = {
        "alpha": [release("alpha", 1, ReleaseStatus.LIVE, "f1")],
        "gone": [release("gone", 4, ReleaseStatus.LIVE, "g4")],
        "theirs": [release("theirs", 1, ReleaseStatus.LIVE, "t1", repo="other/repo")],
        "retired": [release("retired", 1, ReleaseStatus.RETIRED, "r1")],
    }

    result = plan([manifest("alpha")], {"alpha": "f1"}, history)

    assert result.removed == ["gone"]
    assert not result.empty
    assert [e.server for e in result.entries if e.action is Action.REMOVE] == ["gone"]


def test_a_server_live_from_another_repo_refuses_the_whole_plan() -> None:
    """Two repos may not deploy the same server name; the error names both."""
    history = {"alpha": [release("alpha", 1, ReleaseStatus.LIVE, "f1", repo="other/repo")]}

    with pytest.raises(DeployError, match="'alpha' is already deployed from repo 'other/repo'"):
        plan([manifest("alpha")], {"alpha": "f2"}, history)


def test_a_rollback_plan_restarts_the_stored_release_from_its_own_manifest() -> None:
    """plan_release rebuilds the release's manifest and reuses its image and commit."""
    stored = release("alpha", 3, ReleaseStatus.PREVIOUS, "f3")

    (entry,) = plan_release(stored, "rollback alpha to r3").entries

    assert (entry.action, entry.release, entry.why) == (Action.REUSE, 3, "rollback alpha to r3")
    assert entry.spec is not None
    assert (entry.spec.image, entry.spec.commit, entry.spec.manifest.port) == (
        stored.image,
        stored.commit_sha,
        8080,
    )


def test_the_fingerprint_follows_tree_hashes_manifest_and_build_args() -> None:
    """Any change to the folder, the context, the manifest or a build arg changes the fingerprint."""
    base = fingerprint(manifest("alpha"), ["t1", "c1"], {"BASE_IMAGE": "x"})

    assert base == fingerprint(manifest("alpha"), ["t1", "c1"], {"BASE_IMAGE": "x"})
    assert base != fingerprint(manifest("alpha"), ["t2", "c1"], {"BASE_IMAGE": "x"})
    assert base != fingerprint(manifest("alpha"), ["t1", "c2"], {"BASE_IMAGE": "x"})
    assert base != fingerprint(manifest("alpha", version="1.0.1"), ["t1", "c1"], {"BASE_IMAGE": "x"})
    assert base != fingerprint(manifest("alpha"), ["t1", "c1"], {"BASE_IMAGE": "y"})


def test_a_commit_without_manifests_is_refused_instead_of_removing_every_live_server() -> None:
    """No manifest found (a glob that matches nothing) never removes the repo's live servers."""
    history = {
        "alpha": [release("alpha", 1, ReleaseStatus.LIVE, "f1")],
        "beta": [release("beta", 2, ReleaseStatus.LIVE, "f2")],
        "theirs": [release("theirs", 1, ReleaseStatus.LIVE, "t1", repo="other/repo")],
    }

    with pytest.raises(
        DeployError, match=r"would remove every live server of owner/PROJECTS_all \(alpha, beta\)"
    ):
        plan([], {}, history)


def test_removing_every_server_is_possible_when_the_commit_message_says_so() -> None:
    """With [remove-all] the same commit removes the repo's servers, and only them."""
    history = {
        "alpha": [release("alpha", 1, ReleaseStatus.LIVE, "f1")],
        "theirs": [release("theirs", 1, ReleaseStatus.LIVE, "t1", repo="other/repo")],
    }

    result = plan_push([], {}, history, set(), repo=REPO, commit=COMMIT, instance=INSTANCE, remove_all=True)

    assert result.removed == ["alpha"]


def test_a_first_commit_without_manifests_is_simply_empty() -> None:
    """With nothing live from the repo, a commit without manifests has nothing to do, no error."""
    assert plan([], {}, {}).empty
