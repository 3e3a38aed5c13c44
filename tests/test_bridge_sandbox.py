"""pipeline/bridge/sandbox.py: a process confined by Landlock writes only under its own directory.

Real processes on this host's kernel (skipped where it has no Landlock): a confined program writes
in its directory and /dev/null, and neither writes nor reads a sibling directory under the work
root, nor signals its parent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.bridge import sandbox
from tests.conftest import IN_CI

pytestmark = pytest.mark.skipif(
    not sandbox.abi() and not IN_CI, reason="this kernel offers no Landlock (in CI it must have it)"
)

TRY = """
import json, os, signal, sys
def outcome(action):
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "ok"
home, other = sys.argv[1], sys.argv[2]
print(json.dumps({
    "own": outcome(lambda: open(os.path.join(home, "f"), "w").close()),
    "null": outcome(lambda: open("/dev/null", "w").close()),
    "other_write": outcome(lambda: open(os.path.join(other, "g"), "w").close()),
    "other_read": outcome(lambda: open(os.path.join(other, "secret")).read()),
    "parent": outcome(lambda: os.kill(os.getppid(), 0)),
}))
"""


def test_a_confined_process_writes_only_its_own_directory(tmp_path: Path) -> None:
    """Inside `work/a` the program writes; `work/b` is closed to it for writing and reading; with
    ABI 6 it cannot signal its parent."""
    work = tmp_path / "work"
    home, other = work / "a", work / "b"
    home.mkdir(parents=True)
    other.mkdir()
    (other / "secret").write_text("b's")
    fd = sandbox.ruleset(str(home), str(work))
    assert fd is not None
    try:
        done = subprocess.run(
            [sys.executable, "-c", TRY, str(home), str(other)],
            preexec_fn=sandbox.restrictor(fd),
            cwd=home,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    finally:
        os.close(fd)
    seen = json.loads(done.stdout)
    assert seen["own"] == seen["null"] == "ok"
    assert seen["other_write"] == seen["other_read"] == "PermissionError"
    assert seen["parent"] == ("PermissionError" if sandbox.abi() >= 6 else "ok")
    assert sandbox.status() == f"landlock ABI {sandbox.abi()}"


def test_a_link_that_leads_into_the_work_root_opens_nothing_of_it(tmp_path: Path) -> None:
    """Beside the work root, what is readable stays readable (a checkout under /tmp keeps its
    .venv), but a link resolving to a folder that holds the work root is not followed into it."""
    work = tmp_path / "deep" / "work"
    home, other = work / "a", work / "b"
    home.mkdir(parents=True)
    other.mkdir()
    (other / "secret").write_text("b's")
    (tmp_path / "beside").write_text("readable")
    (tmp_path / "link").symlink_to(tmp_path / "deep")
    fd = sandbox.ruleset(str(home), str(work))
    assert fd is not None
    script = "import sys; print(open(sys.argv[1]).read()); open(sys.argv[2]).read()"
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                str(tmp_path / "beside"),
                str(tmp_path / "link" / "work" / "b" / "secret"),
            ],
            preexec_fn=sandbox.restrictor(fd),
            cwd=home,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(fd)
    assert done.stdout.strip() == "readable"
    assert done.returncode != 0 and "PermissionError" in done.stderr
