"""What the builder gets from a pushed server: its Dockerfile, read safely and with its parser
directives tamed, and its .dockerignore patterns, bounded.

A Dockerfile's `# syntax=` directive (and the BUILDKIT_SYNTAX build arg) would make BuildKit
fetch and run a frontend image of the pusher's choice. Rather than mirror BuildKit's directive
parser (line splitting, byte-order marks, file size: every difference is a bypass), the builder
never sees the pushed file's directives: it gets the file's text behind a header of our own,
`# escape=` kept when it is one of the two legal values, and a blank line, which ends directive
parsing, so the pushed lines are comments whatever they say.

docker-py turns each `**` of a .dockerignore pattern into a nested regex group that backtracks
exponentially with path depth; a matcher holding the GIL stalls the proxy in the same process,
so patterns are bounded before anything matches them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import BuildError

MAX_DOCKERFILE_BYTES = 1024 * 1024
MAX_IGNORE_BYTES = 1024 * 1024
MAX_IGNORE_PATTERNS = 1000
MAX_PATTERN_LENGTH = 1024
MAX_DOUBLE_STARS = 2  # per pattern: each one multiplies the matcher's backtracking by the path depth
# Per path segment: docker-py's `[^/]*` for each `*` backtracks polynomially in the name's length;
# measured on one 200-character name: 3 stars 2 ms, 4 stars 54 ms, 5 stars 2.6 s, 7 over a minute.
MAX_STARS_PER_SEGMENT = 3
FRONTEND_ARG = "BUILDKIT_SYNTAX"  # a build arg that, like `# syntax=`, names a frontend image
_DIRECTIVE = re.compile(r"^#[ \t]*([A-Za-z][A-Za-z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$")
_REPEATED_STARS = re.compile(r"(\*\*/)+")


@dataclass(frozen=True)
class Dockerfile:
    """The text handed to the builder, and what was changed on the way (for the deploy log)."""

    text: str
    notes: tuple[str, ...] = ()
    escape: str = "\\"
    pushed: str = ""  # the file as pushed (byte-order mark dropped), for the fetch rules


@dataclass(frozen=True)
class Instruction:
    """One logical Dockerfile instruction: the line it starts on, its keyword, the rest."""

    line: int
    keyword: str
    rest: str


def read(root: Path, context: Path, name: str) -> Dockerfile:
    """Read `context/name`, which must be a regular file inside `root`, and tame its directives."""
    path, root = (context / name).resolve(), root.resolve()
    inside = path.is_relative_to(root)
    where = path.relative_to(root).as_posix() if inside else name
    if not inside or not path.is_file():
        raise BuildError(f"the Dockerfile {where} is not a file inside the repository")
    with path.open("rb") as found:
        data = found.read(MAX_DOCKERFILE_BYTES + 1)
    if len(data) > MAX_DOCKERFILE_BYTES:
        raise BuildError(f"the Dockerfile {where} is over {MAX_DOCKERFILE_BYTES // 1024} KiB")
    try:
        return tame(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BuildError(f"the Dockerfile {where} is not UTF-8 ({exc.reason} at byte {exc.start})") from exc


def tame(text: str) -> Dockerfile:
    """The Dockerfile behind our own directive header: only a legal `# escape=` survives."""
    text = text.removeprefix("\ufeff")
    escape, notes = "", []
    for line in text.split("\n"):  # BuildKit splits on \n only; a stray \r stays in the line
        directive = _DIRECTIVE.match(line.rstrip("\r"))
        if directive is None:
            break
        key, value = directive[1].lower(), directive[2]
        if key == "escape" and value in ("\\", "`"):
            escape = value
        elif key == "syntax":
            notes.append(
                f"`{line.strip()}` ignored: builds use the engine's built-in Dockerfile frontend, "
                "never a frontend image named by the pushed file"
            )
    header = f"# escape={escape}\n" if escape else ""
    return Dockerfile(f"{header}\n{text}", tuple(notes), escape or "\\", text)


def ignore_patterns(context: Path) -> list[str]:
    """The context's .dockerignore patterns; raise BuildError naming the line of a pattern too costly
    to match (a symlinked .dockerignore is not read)."""
    found, problems = _ignore_lines(context)
    if problems:
        line, message = problems[0]
        raise BuildError(f".dockerignore:{line}: {message}")
    return [pattern for _, pattern in found]


def ignore_problems(context: Path) -> list[tuple[int, str]]:
    """(line, message) for every .dockerignore pattern the build would refuse (for `check`)."""
    return _ignore_lines(context)[1]


def _ignore_lines(context: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    ignore = context / ".dockerignore"
    if ignore.is_symlink() or not ignore.is_file():
        return [], []
    with ignore.open("rb") as opened:
        text = opened.read(MAX_IGNORE_BYTES).decode("utf-8", "replace")
    patterns: list[tuple[int, str]] = []
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = _REPEATED_STARS.sub("**/", line)
        if len(line) > MAX_PATTERN_LENGTH:
            problems.append((number, f"a pattern over {MAX_PATTERN_LENGTH} characters"))
        elif line.count("**") > MAX_DOUBLE_STARS:
            problems.append(
                (number, f"more than {MAX_DOUBLE_STARS} `**` in one pattern (too costly to match)")
            )
        elif any(_stars(segment) > MAX_STARS_PER_SEGMENT for segment in line.split("/") if segment != "**"):
            problems.append(
                (number, f"more than {MAX_STARS_PER_SEGMENT} `*` in one path segment (too costly to match)")
            )
        patterns.append((number, line))
    if len(patterns) > MAX_IGNORE_PATTERNS:
        problems.append((patterns[MAX_IGNORE_PATTERNS][0], f"more than {MAX_IGNORE_PATTERNS} patterns"))
    return patterns, problems


def _stars(segment: str) -> int:
    """How many runs of `*` a path segment holds (`**` inside a name counts once)."""
    return len(re.findall(r"\*+", segment))
