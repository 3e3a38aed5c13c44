"""What a pushed Dockerfile may make the Docker daemon fetch: nothing deploy.yaml did not allow.

`build.network: none` covers RUN steps only. The daemon itself fetches for a remote `ADD`
(on the host's own network: a service on its 127.0.0.1, a cloud metadata address), for `FROM`,
`COPY --from` and `RUN --mount=from=` naming an image (and 127.0.0.0/8 is an insecure registry
by default, so `FROM 127.0.0.1:PORT/x` pulls over plain HTTP), and an image it already has may be
another server's. So every image a Dockerfile names must be an earlier stage, `scratch`, or match
`build.base_images`; a remote `ADD` needs `build.remote_add: true`; cache mounts, shared by every
build on the engine, are refused. FROM lines are expanded with the ARGs declared before the first
FROM and the build's own args, as the builder does; `--from` names must be written out; a name
that cannot be expanded is refused. Server images (tagged under SERVER_IMAGES) are refused
whatever the globs say: one server never builds on another's image, of its repo or another's;
at build time `prepare` also refuses any named image that carries a server's label.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence

from pipeline.dockerfile import Dockerfile, Instruction

SERVER_IMAGES = "central-mcp-server"  # the repository every server image is tagged under
_DEFAULT_REGISTRY = ("docker.io/", "index.docker.io/")
REMOTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|git@)")
_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-+])(?P<word>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def problems(
    dockerfile: Dockerfile,
    args: Mapping[str, str],
    base_images: Sequence[str],
    remote_add: bool,
    named: list[tuple[int, str]] | None = None,
) -> list[tuple[int, str]]:
    """(line, message) for every fetch the Dockerfile would make the daemon do without leave;
    the images it names and may use (not stages, not scratch) are appended to `named`."""
    steps = instructions(dockerfile.pushed, dockerfile.escape)
    scope = dict(_global_args(steps, args))  # what FROM lines expand, and nothing later changes it
    stages: list[str] = []
    found: list[tuple[int, str]] = []
    for step in steps:
        allowed: list[str] = []
        found += [(step.line, m) for m in _check(step, scope, stages, base_images, remote_add, allowed)]
        if named is not None:
            named += [(step.line, image) for image in allowed]
    return found


def server_image(name: str, number: int, instance: str) -> str:
    """The tag of release `number` of server `name` on `instance` (never a base image's name)."""
    return f"{SERVER_IMAGES}/{name}:r{number}-{instance}"


def instructions(text: str, escape: str = "\\") -> list[Instruction]:
    """The logical instructions of a Dockerfile: continuations joined, comments and blanks dropped."""
    steps: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # outside an instruction or inside a continuation, the parser drops these too
        if not parts:
            start = number
        if line.rstrip().endswith(escape):
            parts.append(line.rstrip()[: -len(escape)])
            continue
        parts.append(line)
        steps.append(_instruction(start, " ".join(p.strip() for p in parts)))
        parts = []
    if parts:
        steps.append(_instruction(start, " ".join(p.strip() for p in parts)))
    return steps


def _instruction(line: int, text: str) -> Instruction:
    keyword, _, rest = text.partition(" ")
    return Instruction(line, keyword.upper(), rest.strip())


def _global_args(steps: list[Instruction], args: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """ARGs before the first FROM, with the build's values: what FROM lines may expand."""
    for step in steps:
        if step.keyword == "FROM":
            return
        if step.keyword == "ARG":
            for word in _words(step.rest):
                name, _, default = word.partition("=")
                yield name, args.get(name, default)


def _check(
    step: Instruction,
    scope: Mapping[str, str],
    stages: list[str],
    base_images: Sequence[str],
    remote_add: bool,
    named: list[str],
) -> Iterator[str]:
    keyword, rest = step.keyword, step.rest
    if keyword == "ONBUILD":
        inner = _instruction(step.line, rest)
        yield from (f"ONBUILD {m}" for m in _check(inner, scope, stages, base_images, remote_add, named))
    elif keyword == "FROM":
        words = [w for w in _words(rest) if not w.startswith("--")]
        image = _expand(words[0], scope) if words else None
        yield from _image(image, words[0] if words else "", stages, base_images, "FROM", named)
        if len(words) >= 3 and words[1].lower() == "as":
            stages.append(words[2].lower())
        else:
            stages.append("")
    elif keyword in ("COPY", "ADD"):
        flags = [w for w in _words(rest) if w.startswith("--from=")]
        for flag in flags:
            name = flag.removeprefix("--from=")
            yield from _image(_literal(name), name, stages, base_images, f"{keyword} --from", named)
        if keyword == "ADD" and not remote_add:
            yield from _remote_sources(rest)
    elif keyword == "RUN":
        for mount in (w.removeprefix("--mount=") for w in _words(rest) if w.startswith("--mount=")):
            yield from _mount(mount, stages, base_images, named)


def _image(
    image: str | None,
    written: str,
    stages: list[str],
    base_images: Sequence[str],
    where: str,
    named: list[str],
) -> Iterator[str]:
    if image is None:
        yield f"{where} {written}: a name the provider cannot expand, so cannot allow"
        return
    if image.isdigit() and where != "FROM" and int(image) < len(stages):
        return  # an earlier stage by index
    name = image.lower()
    if name == "scratch" or name in (s for s in stages if s):
        return
    if _is_server_image(name):
        yield (
            f"{where} {image}: a server image this provider built; a Dockerfile builds on base images "
            "(build.base_images in deploy.yaml), never on another server's image"
        )
        return
    if any(fnmatch.fnmatchcase(image, allowed) for allowed in base_images):
        named.append(image)
        return
    allowed = ", ".join(base_images) or "none"
    yield (
        f"{where} {image}: the daemon would fetch or read that image; allowed are earlier stages, "
        f"scratch and build.base_images in deploy.yaml ({allowed})"
    )


def _remote_sources(rest: str) -> Iterator[str]:
    words = [w for w in _json_or_words(rest) if not w.startswith("--")]
    for source in words[:-1]:
        if REMOTE.match(source):
            yield (
                f"ADD {source}: the daemon fetches it on the host's own network, whatever the build's; "
                "download it in the repository, or allow it with build.remote_add in deploy.yaml"
            )


def _mount(mount: str, stages: list[str], base_images: Sequence[str], named: list[str]) -> Iterator[str]:
    options = dict(part.partition("=")[::2] for part in mount.split(","))
    if options.get("type", "bind") == "cache":
        yield "RUN --mount=type=cache: a cache mount is shared by every build on the engine; use a stage"
    if "from" in options:
        source = options["from"]
        yield from _image(_literal(source), source, stages, base_images, "RUN --mount=from", named)


def _is_server_image(name: str) -> bool:
    """Whether `name` (lower case) is under SERVER_IMAGES, however the default registry is spelt."""
    for prefix in _DEFAULT_REGISTRY:
        name = name.removeprefix(prefix)
    return name.startswith(f"{SERVER_IMAGES}/")


def _expand(word: str, env: Mapping[str, str]) -> str | None:
    """`word` with $VAR, ${VAR}, ${VAR:-x}, ${VAR:+x} replaced; None if anything else is left."""

    def value(match: re.Match[str]) -> str:
        name = match["braced"] or match["bare"]
        current = env.get(name, "")
        if match["op"] == ":-":
            return current or match["word"]
        if match["op"] == ":+":
            return match["word"] if current else ""
        return current

    expanded = _VARIABLE.sub(value, word)
    return None if "$" in expanded else expanded


def _literal(word: str) -> str | None:
    """A name used as written; None when it holds a variable (its value in that scope is not checked)."""
    return None if "$" in word else word


def _words(rest: str) -> list[str]:
    try:
        return shlex.split(rest, posix=True)
    except ValueError:
        return rest.split()


def _json_or_words(rest: str) -> list[str]:
    flags = [w for w in rest.split() if w.startswith("--")]
    body = " ".join(w for w in rest.split() if not w.startswith("--"))
    if body.startswith("["):
        try:
            parsed = json.loads(body)
        except ValueError:
            return [*flags, *_words(body)]
        if isinstance(parsed, list):
            return [*flags, *(str(p) for p in parsed)]
    return [*flags, *_words(body)]
