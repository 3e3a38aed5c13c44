"""pipeline/dockerfile.py: no pushed Dockerfile directive reaches the builder; .dockerignore is bounded."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pipeline import dockerfile
from pipeline.errors import BuildError

# BuildKit's directive scan (frontend/dockerfile/parser): lines split on \n, directives until the first
# line that is not one. What it would see of a tamed file must hold no `syntax`.
GO_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")


def directives_buildkit_sees(text: str) -> dict[str, str]:
    """The parser directives BuildKit would honour in `text`."""
    found: dict[str, str] = {}
    for line in text.split("\n"):
        match = GO_DIRECTIVE.match(line)
        if match is None:
            break
        found[match[1].lower()] = match[2]
    return found


@pytest.mark.parametrize(
    "pushed",
    [
        "# syntax=evil/frontend\nFROM x\n",
        "# a=b\rX\n# syntax=evil/frontend\nFROM x\n",
        "# a=b\u2028X\n# syntax=evil/frontend\nFROM x\n",
        "# a=b\x0bX\n# syntax=evil/frontend\nFROM x\n",
        "\ufeff# syntax=evil/frontend\nFROM x\n",
        "# a=b\n" * 20_000 + "# syntax=evil/frontend\nFROM x\n",
    ],
    ids=["first-line", "bare-cr", "line-separator", "vertical-tab", "byte-order-mark", "past-64-kib"],
)
def test_no_pushed_directive_reaches_the_builder(pushed: str) -> None:
    """However the pushed file spells or hides it, BuildKit sees no `syntax` directive in what it gets."""
    tamed = dockerfile.tame(pushed)
    assert "syntax" not in directives_buildkit_sees(tamed.text)
    assert tamed.text.endswith(pushed.removeprefix("\ufeff"))


def test_a_syntax_directive_is_reported_in_the_notes() -> None:
    """The deploy log is told that the directive was ignored, quoting it."""
    notes = dockerfile.tame("# syntax=docker/dockerfile:1\nFROM x\n").notes
    assert notes == (
        "`# syntax=docker/dockerfile:1` ignored: builds use the engine's built-in Dockerfile frontend, "
        "never a frontend image named by the pushed file",
    )


@pytest.mark.parametrize("escape", ["`", "\\"])
def test_a_legal_escape_directive_is_kept(escape: str) -> None:
    """`# escape=` keeps working: it is the one directive our header carries over."""
    tamed = dockerfile.tame(f"# escape={escape}\nFROM x\n")
    assert directives_buildkit_sees(tamed.text) == {"escape": escape}


def test_an_illegal_escape_value_is_dropped() -> None:
    """Only the two characters Docker allows are carried over."""
    assert directives_buildkit_sees(dockerfile.tame("# escape=$(x)\nFROM x\n").text) == {}


def test_a_dockerfile_outside_the_repository_is_refused(tmp_path: Path) -> None:
    """A Dockerfile that is a symlink out of the repository is never read."""
    (tmp_path / "outside").write_text("FROM secret\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(tmp_path / "outside", repo / "Dockerfile")
    with pytest.raises(BuildError, match="is not a file inside the repository"):
        dockerfile.read(repo, repo, "Dockerfile")


def test_an_oversized_or_binary_dockerfile_is_refused(tmp_path: Path) -> None:
    """Over 1 MiB, or bytes that are not UTF-8, is a clear build error naming the file."""
    (tmp_path / "Big").write_bytes(b"#" * (dockerfile.MAX_DOCKERFILE_BYTES + 1))
    (tmp_path / "Bin").write_bytes(b"FROM x\n\xff\xfe\n")
    with pytest.raises(BuildError, match="the Dockerfile Big is over 1024 KiB"):
        dockerfile.read(tmp_path, tmp_path, "Big")
    with pytest.raises(BuildError, match="the Dockerfile Bin is not UTF-8"):
        dockerfile.read(tmp_path, tmp_path, "Bin")


def test_dockerignore_patterns_are_read_and_costly_ones_refused_with_their_line(tmp_path: Path) -> None:
    """Comments go, `**/**/` collapses; a pattern with too many stars is refused, naming its line."""
    (tmp_path / ".dockerignore").write_text("# c\n\n*.pyc\n**/**/**/cache\n")
    assert dockerfile.ignore_patterns(tmp_path) == ["*.pyc", "**/cache"]
    (tmp_path / ".dockerignore").write_text("*.pyc\n*a*a*a*a*b\n**/a/**/b/**/c\n")
    assert dockerfile.ignore_problems(tmp_path) == [
        (2, "more than 3 `*` in one path segment (too costly to match)"),
        (3, "more than 2 `**` in one pattern (too costly to match)"),
    ]
    with pytest.raises(BuildError, match=r"^\.dockerignore:2: more than 3 `\*`"):
        dockerfile.ignore_patterns(tmp_path)


def test_a_symlinked_dockerignore_is_not_read(tmp_path: Path) -> None:
    """A .dockerignore that is a symlink (perhaps to a host file) is ignored, not followed."""
    (tmp_path / "elsewhere").write_text("*a*a*a*a*a*a*b\n")
    os.symlink(tmp_path / "elsewhere", tmp_path / ".dockerignore")
    assert dockerfile.ignore_patterns(tmp_path) == []
