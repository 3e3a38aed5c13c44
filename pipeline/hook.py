"""Git intake: `init-repo` makes the VM's bare repo; the pre-receive hook deploys a push.

The hook runs inside git's quarantine, so it takes the snapshot itself (see source.py),
hands the directory to the serve process, and prints the deploy's events, which git shows
to the pusher as `remote:` lines. A non-zero exit rejects the push: the branch never moves
to a commit that is not live.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import control as control_mod
from pipeline import partial, source
from pipeline.config.settings import Repo, Settings
from pipeline.errors import CentralMCPError, SourceError
from pipeline.states import DeploySource

HOOKS_DIR = Path(__file__).resolve().parent.parent / "hooks"
HOOK_NAMES = ("pre-receive",)
ENV_FILE = "central-mcp.env"


@dataclass(frozen=True)
class RefUpdate:
    """One line of pre-receive input."""

    old: str
    new: str
    ref: str


def repo_path(settings: Settings, name: str) -> Path:
    """Where the VM keeps the bare repository `name`."""
    return settings.state_dir / "repos" / f"{name}.git"


def init_repo(settings: Settings, name: str) -> tuple[Path, list[str]]:
    """Create (or update) the bare repo and install the hooks; return its path and remote lines."""
    repo = settings.repo(name)
    path = repo_path(settings, repo.name)
    source.init_bare(path, repo.branch)
    hooks = path / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in HOOK_NAMES:
        shutil.copyfile(HOOKS_DIR / hook, hooks / hook)
        (hooks / hook).chmod(0o755)
    env = {
        "CENTRAL_MCP_PYTHON": sys.executable,
        "CENTRAL_MCP_CONFIG": str(settings.config_path.resolve()),
        "CENTRAL_MCP_STATE_DIR": str(settings.state_dir),
        "CENTRAL_MCP_REPO": repo.name,
        "PYTHONUNBUFFERED": "1",
    }
    (hooks / ENV_FILE).write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    user = os.environ.get("USER", "root")
    host = os.uname().nodename
    return path, [
        f"git remote add vm ssh://{user}@{host}{path}   # from a laptop",
        f"git remote add vm {path}   # on this VM",
    ]


def pre_receive(
    settings: Settings,
    repo_name: str,
    lines: Iterable[str],
    out: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Handle one push; return 0 to accept every ref, 1 to reject the push."""
    repo = settings.repo(repo_name)
    git_dir = cwd or Path.cwd()
    status = 0
    for update in parse(lines):
        verdict = _decide(repo, update)
        if verdict:
            out(verdict)
            if verdict.startswith("refused"):
                status = 1
            continue
        try:
            if not _deploy(settings, repo, update, git_dir, out, env):
                status = 1
        except CentralMCPError as exc:
            out(f"push rejected: {exc}")
            status = 1
    return status


def deploy_ref(
    settings: Settings,
    repo_name: str | None,
    ref: str | None,
    out: Callable[[str], None],
    origin: DeploySource = DeploySource.CLI,
) -> bool:
    """Deploy `ref` of a bare repo by hand (`central-mcp deploy`); return whether it succeeded."""
    repo = settings.repo(repo_name)
    path = repo_path(settings, repo.name)
    wanted = ref or repo.branch
    commit = source.resolve(path, wanted)
    full = wanted if wanted.startswith("refs/") else f"refs/heads/{wanted}"
    return _deploy(settings, repo, RefUpdate("", commit, full), path, out, None, origin)


def parse(lines: Iterable[str]) -> list[RefUpdate]:
    """Parse pre-receive input: `<old> <new> <ref>` per line."""
    updates = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            updates.append(RefUpdate(*parts))
    return updates


def _decide(repo: Repo, update: RefUpdate) -> str:
    """Return why a ref is accepted or refused without a deploy, or '' to deploy it."""
    if update.ref.startswith("refs/tags/"):
        return f"{update.ref}: accepted; tags do not deploy"
    if update.ref != f"refs/heads/{repo.branch}":
        return f"{update.ref}: accepted without a deploy (only {repo.branch} deploys)"
    if update.new == source.ZERO_SHA:
        return (
            f"refused: deleting {repo.branch} would leave the VM without a source for what is "
            "live; remove servers by deleting their folders instead"
        )
    return ""


def _deploy(
    settings: Settings,
    repo: Repo,
    update: RefUpdate,
    git_dir: Path,
    out: Callable[[str], None],
    env: Mapping[str, str] | None,
    origin: DeploySource = DeploySource.PUSH,
) -> bool:
    control = control_mod.Control.load(settings.state_dir)
    select = partial.selector(settings, repo, partial.live_prints(settings))  # only what changed is unpacked
    workdir = source.new_workdir(source.snapshots_dir(settings.state_dir))
    try:
        # A push names the branch value it expects to replace; the deploy refuses to go on if
        # another deploy moved the branch while this one waited (git would refuse the update).
        expect = {source.EXPECT_OLD: update.old, source.GIT_DIR: str(git_dir)} if update.old else {}
        snap = source.take(
            git_dir,
            repo.name,
            update.ref,
            update.new,
            workdir,
            env,
            expect,
            source.bounds(settings),
            repo.manifests,
            select,
        )
    except SourceError:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    body = {
        "source": origin,
        "repo": repo.name,
        "ref": update.ref,
        "commit": update.new,
        "snapshot_dir": str(workdir),
        "author": snap.author,
        "message": snap.message,
    }
    last = control_mod.stream(control, "/api/deploys", body, lambda e: out(render(e)))
    # control.url is where serve really listens (`serve --port` may differ from deploy.yaml).
    url = f"{settings.public_url.rstrip('/') or control.url}/deploys/{last.get('deploy')}"
    out(f"deploy: {url}")
    return str(last.get("text", "")).startswith("succeeded")


def render(event: Mapping[str, Any]) -> str:
    """One event as the pusher sees it."""
    kind, text = event.get("kind"), str(event.get("text", ""))
    if kind == "step":
        return text
    if kind == "end":
        return f"==> {text}"
    return f"    {text}"
