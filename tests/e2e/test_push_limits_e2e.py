"""What one push may cost the VM: its snapshot's size and file count, and its deploy log's lines.

Real `git push` runs into a real serve whose deploy.yaml sets small limits: a few hundred KiB of
pack that unpacks to 128 MiB is refused before it is written, and a build printing 30,000 lines
is stored (and streamed) capped, with one "log truncated" line.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, Workspace, running_provider

pytestmark = pytest.mark.docker

LIMITS = "limits: {snapshot_size: 16m, snapshot_files: 300, log_lines: 1000}\n"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Provider]:
    """A provider with a 16 MiB, 300-file snapshot bound and 1,000 lines of build output per deploy."""
    with running_provider(tmp_path_factory.mktemp("limits-e2e"), docker_host, LIMITS) as running:
        yield running


@pytest.fixture
def work(limited: Provider, tmp_path: Path) -> Workspace:
    """A fresh clone of the limited provider's repo."""
    return limited.clone(tmp_path / "work")


def test_a_push_that_unpacks_past_the_snapshot_size_is_refused_unwritten(
    limited: Provider, work: Workspace
) -> None:
    """128 MiB of zeros (a few hundred KiB pushed) is refused in seconds naming limits.snapshot_size;
    nothing of it stays under <state>/snapshots and the branch does not move."""
    server = work.put("echo")
    (work.root / "servers" / server / "zeros.bin").write_bytes(bytes(128 * 1024 * 1024))
    work.commit("a big compressible file")

    push = work.push()

    assert not push.ok
    assert "unpacks to more than 16m (limits.snapshot_size in deploy.yaml; stopped at " in push.output
    assert push.seconds < 30, push.seconds
    assert list((limited.state / "snapshots").iterdir()) == []
    assert limited.branch() == ""


def test_a_push_with_too_many_files_is_refused_naming_the_limit(limited: Provider, work: Workspace) -> None:
    """400 small files past a 300-file bound: refused naming limits.snapshot_files."""
    server = work.put("echo")
    for i in range(400):
        (work.root / "servers" / server / f"f{i}.txt").write_text(str(i))
    work.commit("many files")

    push = work.push()

    assert not push.ok
    assert "holds more than 300 files and folders (limits.snapshot_files in deploy.yaml)" in push.output


def test_a_build_printing_30000_lines_is_stored_and_streamed_capped(
    limited: Provider, work: Workspace
) -> None:
    """The deploy finishes quickly; the pusher and the stored log hold the first 1,000 output lines,
    one "log truncated" line and the provider's own lines, not 30,000."""
    server = work.put("echo")
    dockerfile = work.root / "servers" / server / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + f"RUN seq -f 'noise %g {time.time()}' 1 30000\n")
    work.commit("a noisy build")

    push = work.push()

    assert push.ok, push.output[-3000:]
    assert push.seconds < 60, push.seconds
    assert push.output.count("noise ") <= 1000
    truncated = "log truncated after 1000 lines of output (limits.log_lines in deploy.yaml)"
    assert truncated in push.output
    stored = limited.log(push.deploy_id).splitlines()
    assert sum("noise " in line for line in stored) <= 1000
    assert truncated in "\n".join(stored) and stored[-1].startswith("succeeded: live: ")
    assert len(stored) < 1000 + 60
    with sqlite3.connect(limited.state / "central-mcp.db") as db:
        [(rows,)] = db.execute("SELECT COUNT(*) FROM events WHERE deploy_id = ?", (push.deploy_id,))
    assert rows == len(stored)


def test_a_push_asking_for_more_memory_than_the_cap_is_refused(limited: Provider, work: Workspace) -> None:
    """resources.memory over limits.memory (2g by default) is refused at deploy naming the server,
    the value and the cap; nothing is built."""
    server = work.put("echo", manifest=lambda m: m["resources"].update(memory="64g"))
    work.commit("a greedy server")

    push = work.push()

    assert not push.ok
    cap = "more than this VM allows (2g, limits.memory in deploy.yaml)"
    assert f"server '{server}' asks for memory '64g', {cap}" in push.output
    assert "==> build" not in push.output
