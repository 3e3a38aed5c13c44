"""pipeline/dockerhost.py: builds with BuildKit through the engine's API, or the legacy builder."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.models.containers import ContainerCollection

from pipeline import dockerfile
from pipeline.baseimage import BASE_IMAGE
from pipeline.config.settings import Settings
from pipeline.dockerhost import LABEL_INSTANCE, DockerHost, RunSpec
from pipeline.errors import BuildError, BuildKitUnavailable
from pipeline.hostrelay import HostRelays
from pipeline.network import Networks

LABELS = {"central-mcp.server": "probe", "central-mcp.release": "r1"}
MIB = 1 << 20
MAX_LOGGED = 24 * MIB  # of a server's output kept on the host's disk, rotated files included


@pytest.fixture
def fresh_host(docker_host: DockerHost) -> DockerHost:
    """A DockerHost of its own (its BuildKit flag is per host), on the real engine."""
    return DockerHost(docker_host.client)


@pytest.fixture
def tag(docker_host: DockerHost) -> Iterator[str]:
    """A throwaway image tag, removed afterwards."""
    name = f"central-mcp-test/build-{secrets.token_hex(4)}:r1"
    yield name
    docker_host.remove_image(name)


def context(tmp_path: Path, dockerfile: str, **files: str) -> Path:
    """A build context with this Dockerfile and files."""
    (tmp_path / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


RUNS = f"FROM {BASE_IMAGE}\nCOPY . /app\nRUN echo built-$(cat /app/word.txt)\nUSER 65534\n"


@pytest.mark.docker
@pytest.mark.parametrize("buildkit", [True, False], ids=["buildkit", "legacy"])
def test_a_build_streams_its_output_and_labels_the_image(
    fresh_host: DockerHost, tag: str, tmp_path: Path, buildkit: bool
) -> None:
    """Both builders stream the RUN step's output, honour .dockerignore, and set the labels."""
    fresh_host.buildkit = buildkit
    lines: list[str] = []
    word = secrets.token_hex(4)  # a new context each run, so the RUN step is not taken from the cache
    files = {"word.txt": word, "secret.txt": "no", ".dockerignore": "secret.txt\n"}
    root = context(tmp_path, RUNS, **files)

    image_id = fresh_host.build(
        tag, root, RUNS, dockerfile.ignore_patterns(root), {}, LABELS, lines.append, network="none"
    )

    assert image_id.startswith("sha256:")
    assert f"built-{word}" in lines, lines
    assert any(line.startswith("#") for line in lines) is buildkit  # BuildKit's numbered steps
    image = fresh_host.client.images.get(tag)
    assert {k: image.labels[k] for k in LABELS} == LABELS
    assert image.attrs["Config"]["User"] == "65534"
    listing = fresh_host.client.containers.run(tag, ["ls", "/app"], remove=True, network_mode="none").decode()
    assert "word.txt" in listing.split() and "secret.txt" not in listing.split()


@pytest.mark.docker
def test_a_failing_step_is_a_build_error_with_the_steps_output(
    fresh_host: DockerHost, tag: str, tmp_path: Path
) -> None:
    """A RUN that fails (here: no network in the build) raises BuildError with its own output."""
    connect = 'python3 -c "import socket; socket.create_connection((\\"10.0.0.1\\", 80), 1)"'
    dockerfile = f"FROM {BASE_IMAGE}\nRUN echo trying && {connect}\n"
    with pytest.raises(BuildError) as caught:
        fresh_host.build(
            tag, context(tmp_path, dockerfile), dockerfile, [], {}, LABELS, print, network="none"
        )
    message = str(caught.value)
    assert message.startswith(f"image {tag} failed to build:")
    assert "trying" in message and "unreachable" in message


def test_an_engine_that_refuses_buildkit_is_asked_once_then_built_with_the_legacy_builder(
    tmp_path: Path,
) -> None:
    """BuildKitUnavailable from the engine switches this host to the legacy builder, and says so."""
    host = DockerHost.__new__(DockerHost)
    host.buildkit = True
    versions: list[str] = []

    def build(request: object, params: dict[str, str], on_line: object) -> str:
        versions.append(params["version"])
        if params["version"] == "2":
            raise BuildKitUnavailable("buildkit not supported by daemon")
        return "sha256:legacy"

    host._build = build  # type: ignore[method-assign]
    said: list[str] = []
    assert host.build("t", tmp_path, "FROM x\n", [], {}, {}, said.append) == "sha256:legacy"
    assert host.build("t", tmp_path, "FROM x\n", [], {}, {}, said.append) == "sha256:legacy"
    assert versions == ["2", "1", "1"]
    assert said == [
        "the Docker engine refused a BuildKit build (buildkit not supported by daemon); "
        "using the legacy builder"
    ]


@pytest.mark.docker
def test_the_build_cache_is_pruned_only_down_to_what_is_kept(fresh_host: DockerHost) -> None:
    """Keeping a terabyte reclaims nothing: the engine answers, and the cache a build needs stays."""
    assert fresh_host.prune_build_cache(10**12) == 0


@pytest.mark.docker
def test_a_build_past_its_deadline_is_stopped_with_a_clear_error(
    fresh_host: DockerHost, tag: str, tmp_path: Path
) -> None:
    """A build that runs past `timeout` is abandoned at once, naming the deadline."""
    slow = f"FROM {BASE_IMAGE}\nRUN echo {secrets.token_hex(4)} && sleep 30\n"
    started = time.monotonic()
    with pytest.raises(BuildError, match=r"did not build within 2s"):
        fresh_host.build(tag, context(tmp_path, slow), slow, [], {}, LABELS, print, network="none", timeout=2)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "before",
    ["", "# a=b\rX\n", "# a=b\u2028X\n", "\ufeff"],
    ids=["first-line", "bare-cr", "line-separator", "byte-order-mark"],
)
@pytest.mark.docker
def test_a_pushed_syntax_directive_never_reaches_buildkit(
    fresh_host: DockerHost, tag: str, tmp_path: Path, before: str
) -> None:
    """Whatever precedes it, `# syntax=` in a pushed Dockerfile is ignored: the build fetches nothing
    (a fetch of 127.0.0.1:1 would fail it) and the deploy log is told."""
    pushed = f"{before}# syntax=127.0.0.1:1/evil\nFROM {BASE_IMAGE}\nRUN echo {secrets.token_hex(4)}\n"
    (tmp_path / "Dockerfile").write_text(pushed)
    found = dockerfile.read(tmp_path, tmp_path, "Dockerfile")

    image_id = fresh_host.build(tag, tmp_path, found.text, [], {}, LABELS, print, network="none")

    assert image_id.startswith("sha256:")


@pytest.mark.docker
def test_removing_a_container_removes_its_anonymous_volumes(
    docker_host: DockerHost, instance_label: str
) -> None:
    """A container with an anonymous volume (one started before containers got tmpfs, or by hand)
    leaves no volume once removed through the adapter, stopped first or not."""
    for grace in (0.0, 1.0):
        container = docker_host.client.containers.run(
            BASE_IMAGE,
            ["sleep", "30"],
            detach=True,
            volumes=["/data"],
            labels={LABEL_INSTANCE: instance_label},
        )
        [volume] = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
        docker_host.stop_and_remove(str(container.id), grace=grace)
        left = {v.name for v in docker_host.client.volumes.list()}
        if volume in left:  # a failed run leaves nothing behind either
            docker_host.client.volumes.get(volume).remove(force=True)
        assert volume not in left


@pytest.mark.docker
def test_what_a_server_logs_takes_bounded_space_on_the_host(
    docker_host: DockerHost, instance_label: str
) -> None:
    """A server's root is read-only and its /tmp a capped tmpfs, but its output went to an unbounded
    json-file on the host's disk: a server printing without end filled the disk the engine and the
    provider's database live on. What it logs is kept to a few rotated files."""
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=Path(".central-mcp"))
    networks = Networks(docker_host, settings, instance_label, HostRelays(settings.network))
    net = networks.ensure("logs", egress=False)
    try:
        spill = "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(64 * 1024): sys.stdout.write(line)\n"
        running = docker_host.run(
            RunSpec(
                BASE_IMAGE,
                f"cmcp-{instance_label[-20:]}-logs",
                8000,
                {LABEL_INSTANCE: instance_label},
                {},
                128 * MIB,
                0.5,
                ("python3", "-c", spill),
                restart="never",
                network=net.name,
            )
        )
        container = docker_host.client.containers.get(running.id)
        container.wait(timeout=60)
        container.reload()
        log = Path(container.attrs["LogPath"])
        written = sum(f.stat().st_size for f in log.parent.glob(log.name + "*"))
        assert written <= MAX_LOGGED, f"{written / MIB:.0f} MiB of a server's output kept on the host"
    finally:
        for container in docker_host.containers({LABEL_INSTANCE: instance_label}):
            container.remove(force=True)
        networks.prune({})


@pytest.mark.docker
def test_listing_containers_skips_one_removed_while_it_is_listed(
    docker_host: DockerHost, instance_label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container removed between the engine's list and its inspection (the idle job, a drain) is
    left out instead of failing the whole listing with `not found`."""
    labels = {LABEL_INSTANCE: instance_label}
    doomed = docker_host.client.containers.create(BASE_IMAGE, command=["true"], labels=labels)
    kept = docker_host.client.containers.create(BASE_IMAGE, command=["true"], labels=labels)
    inspect = ContainerCollection.get

    def removed_first(collection: ContainerCollection, container_id: str) -> object:
        if container_id == doomed.id:
            doomed.remove(force=True)
        return inspect(collection, container_id)

    monkeypatch.setattr(ContainerCollection, "get", removed_first)
    assert [c.id for c in docker_host.containers(labels)] == [kept.id]
