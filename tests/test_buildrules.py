"""pipeline/buildrules.py: what a pushed Dockerfile may make the daemon fetch (nothing not allowed)."""

from __future__ import annotations

import pytest

from pipeline import buildrules, dockerfile

ALLOWED = ("central-mcp/python:*",)
BASE = "ARG BASE_IMAGE=central-mcp/python:3.11\nFROM ${BASE_IMAGE}\n"


def problems(
    text: str, args: dict[str, str] | None = None, remote_add: bool = False
) -> list[tuple[int, str]]:
    """The rules' verdict on a pushed Dockerfile text."""
    return buildrules.problems(dockerfile.tame(text), args or {}, ALLOWED, remote_add)


def test_the_example_servers_dockerfile_shape_is_allowed() -> None:
    """ARG-defaulted base image, COPY, RUN: nothing fetched, nothing refused."""
    assert (
        problems(BASE + 'COPY . /app\nRUN pip install --no-index /app/vendor/*.whl\nCMD ["python3"]\n') == []
    )


@pytest.mark.parametrize(
    ("text", "line", "start"),
    [
        ("FROM 127.0.0.1:5000/evil\n", 1, "FROM 127.0.0.1:5000/evil: the daemon would fetch"),
        (BASE + "COPY --from=127.0.0.1:5000/evil / /\n", 3, "COPY --from 127.0.0.1:5000/evil: the daemon"),
        (BASE + "ADD http://127.0.0.1:8/x /x\n", 3, "ADD http://127.0.0.1:8/x: the daemon fetches it"),
        (BASE + 'ADD ["https://example.com/a", "/a"]\n', 3, "ADD https://example.com/a: the daemon"),
        (BASE + "ADD git@github.com:o/r.git /r\n", 3, "ADD git@github.com:o/r.git: the daemon"),
        (BASE + "RUN --mount=type=bind,from=other/image,target=/x ls\n", 3, "RUN --mount=from other/image"),
        (BASE + "RUN --mount=type=cache,target=/root/.cache pip x\n", 3, "RUN --mount=type=cache: a cache"),
        (BASE + "ONBUILD ADD http://x/y /y\n", 3, "ONBUILD ADD http://x/y"),
        (BASE + "RUN echo \\\n  && true\nFROM \\\n  evil/image\n", 5, "FROM evil/image"),
    ],
    ids=[
        "from-registry",
        "copy-from",
        "add-url",
        "add-json",
        "add-git",
        "mount-from",
        "cache",
        "onbuild",
        "cont",
    ],
)
def test_each_daemon_fetch_is_refused_on_its_line(text: str, line: int, start: str) -> None:
    """Every instruction that makes the daemon fetch or read an image is refused, naming its line."""
    [(found_line, message)] = problems(text)
    assert (found_line, message[: len(start)]) == (line, start)


def test_a_pushed_build_arg_cannot_point_the_base_image_elsewhere() -> None:
    """FROM is expanded with the build's args as the builder would: a manifest arg is checked too."""
    [(_, message)] = problems(BASE, {"BASE_IMAGE": "127.0.0.1:5000/evil"})
    assert message.startswith("FROM 127.0.0.1:5000/evil:")


def test_a_stage_arg_does_not_change_what_from_expands_to() -> None:
    """FROM sees only the ARGs before the first FROM, so a later ARG cannot hide the real image."""
    text = "ARG X=evil/image\nFROM central-mcp/python:3.11\nARG X=central-mcp/python:3.11\nFROM $X\n"
    [(line, message)] = problems(text)
    assert (line, message[:15]) == (4, "FROM evil/image")


def test_earlier_stages_scratch_and_stage_indexes_are_allowed() -> None:
    """Multi-stage builds keep working: stages by name or index, and scratch, fetch nothing."""
    text = (
        BASE.replace("}", "} AS build")
        + "RUN true\nFROM scratch\nCOPY --from=build /a /a\nCOPY --from=0 /b /b\n"
    )
    assert problems(text) == []


def test_a_variable_in_a_from_flag_is_refused_as_unverifiable() -> None:
    """`COPY --from=$X` could name any image; without a literal name it is refused."""
    [(_, message)] = problems(BASE + "COPY --from=$X / /\n")
    assert message == "COPY --from $X: a name the provider cannot expand, so cannot allow"


def test_remote_add_is_allowed_when_deploy_yaml_says_so() -> None:
    """build.remote_add: true lets ADD of a URL through; images stay checked."""
    assert problems(BASE + "ADD https://example.com/a /a\n", remote_add=True) == []


@pytest.mark.parametrize(
    "image",
    [
        "central-mcp-server/other:r3-abc123",
        "docker.io/central-mcp-server/other:r3-abc123",
        "index.docker.io/central-mcp-server/other:r1-x",
    ],
)
@pytest.mark.parametrize("allowed", [ALLOWED, ("*",), ("central-mcp*",)])
def test_a_server_image_is_refused_whatever_the_base_image_globs(
    image: str, allowed: tuple[str, ...]
) -> None:
    """FROM or COPY --from another server's image (of this repo or another) is refused even when a
    permissive build.base_images glob would allow its name."""
    for text in (f"FROM {image}\n", f"{BASE}COPY --from={image} /app /app\n"):
        [(_, message)] = buildrules.problems(dockerfile.tame(text), {}, allowed, False)
        assert f"{image}: a server image this provider built" in message
        assert "never on another server's image" in message


def test_server_images_are_never_named_like_the_base_image() -> None:
    """A server called `python` is not tagged under central-mcp/python, which the default glob allows."""
    tag = buildrules.server_image("python", 1, "abc123")
    assert tag == "central-mcp-server/python:r1-abc123"
    [(_, message)] = problems(f"FROM {tag}\n")
    assert "a server image this provider built" in message


def test_the_images_a_dockerfile_may_use_are_reported() -> None:
    """`named` receives each allowed image with its line (not stages, not scratch), for the build-time
    label check."""
    named: list[tuple[int, str]] = []
    text = BASE + "FROM scratch AS empty\nCOPY --from=central-mcp/python:3.12 /a /a\nCOPY --from=empty / /\n"
    assert buildrules.problems(dockerfile.tame(text), {}, ALLOWED, False, named) == []
    assert named == [(2, "central-mcp/python:3.11"), (4, "central-mcp/python:3.12")]
