"""The `central-mcp` command: the one place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import settings as settings_mod
from pipeline.config.manifest import check_tree
from pipeline.errors import CentralMCPError, ConfigError, Problem
from pipeline.states import DeploySource
from pipeline.store import Store

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            _err(problem.render())
        return EXIT_FAILED
    except CentralMCPError as exc:
        _err(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="central-mcp", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="deploy.yaml to use (default: ./deploy.yaml; defaults apply if it is missing)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate deploy.yaml and every server manifest")
    check.add_argument(
        "path", nargs="?", type=Path, default=Path("."), help="repository root to check (default: .)"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=_check)

    base = sub.add_parser("base-image", help="make the local Python base image when missing")
    base.add_argument("--force", action="store_true", help="make it again even if present")
    base.set_defaults(handler=_base_image)

    engine = sub.add_parser("engine", help="make sure a Docker engine answers (starts dockerd)")
    engine.set_defaults(handler=_engine)
    firewall = sub.add_parser(
        "firewall", help="install the host firewall that isolates server networks (root; make setup runs it)"
    )
    firewall.add_argument("--check", action="store_true", help="only say whether it is in place")
    firewall.set_defaults(handler=_firewall)

    init = sub.add_parser("init-repo", help="create the VM's bare repo with the deploy hook")
    init.add_argument("name", nargs="?", help="repo name from deploy.yaml (default: the first)")
    init.set_defaults(handler=_init_repo)

    hook = sub.add_parser("hook", help="run a git hook (called by the installed shims)")
    hook.add_argument("hook_name", choices=["pre-receive"])
    hook.add_argument("--repo", required=True)
    hook.set_defaults(handler=_hook)

    deploy = sub.add_parser("deploy", help="deploy a ref of the VM's repo by hand")
    deploy.add_argument("--repo", help="repo name (default: the first in deploy.yaml)")
    deploy.add_argument("--ref", help="branch, tag or commit (default: the deploy branch)")
    deploy.set_defaults(handler=_deploy)

    serve = sub.add_parser("serve", help="run the proxy and the control plane")
    serve.add_argument("--port", type=int, help="port to listen on (overrides deploy.yaml)")
    serve.set_defaults(handler=_serve)

    up = sub.add_parser("up", help="serve, and deploy this checkout's servers (make run)")
    up.add_argument("--port", type=int, help="port to listen on (overrides deploy.yaml)")
    up.set_defaults(handler=_up)

    status = sub.add_parser("status", help="live servers, releases, health and the last deploy")
    status.set_defaults(handler=_status)

    releases = sub.add_parser("releases", help="list a server's releases")
    releases.add_argument("server")
    releases.set_defaults(handler=_releases)

    rollback = sub.add_parser("rollback", help="make an earlier release live again")
    rollback.add_argument("server")
    rollback.add_argument("release", nargs="?", help="e.g. r3 (default: the previous release)")
    rollback.set_defaults(handler=_rollback)

    config = sub.add_parser("client-config", help="print a ready-to-paste MCP client config")
    config.add_argument("project")
    config.add_argument(
        "--format",
        dest="fmt",
        default="vscode",
        choices=["vscode", "cursor", "claude-code", "claude-desktop"],
    )
    config.set_defaults(handler=_client_config)

    webhook = sub.add_parser("webhook-test", help="print a curl line with a signed sample push")
    webhook.add_argument("repo", nargs="?", help="repo name (default: the first)")
    webhook.add_argument("--commit", help="commit the sample push names (default: the branch head)")
    webhook.set_defaults(handler=_webhook_test)

    unit = sub.add_parser("systemd-unit", help="print a systemd unit for this checkout")
    unit.add_argument("--user", default=os.environ.get("USER", "root"))
    unit.set_defaults(handler=_systemd_unit)

    keys = sub.add_parser("keys", help="project API keys for /mcp/*")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once; only a hash is kept)")
    create.add_argument("project")
    create.set_defaults(handler=_keys_create)
    keys_sub.add_parser("list", help="list keys (ids, projects, state)").set_defaults(handler=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys_revoke)
    return parser


def _check(args: argparse.Namespace) -> int:
    problems = []
    manifests = []
    try:
        settings = settings_mod.load(_config_path(args))
    except ConfigError as exc:
        problems.extend(exc.problems)
        settings = settings_mod.Settings(config_path=_config_path(args), state_dir=Path("."))
    report = check_tree(args.path, settings)
    problems.extend(report.problems)
    manifests = [m.name for m in report.manifests]
    if not manifests and not report.problems:
        globs = ", ".join(settings.repo().manifests)
        problems.append(
            Problem(
                str(settings.config_path),
                0,
                0,
                "$.repos[0].manifests",
                f"no server manifest under {args.path} matches {globs}",
                "fix the globs (relative to the repository's root); a push of this tree would remove "
                "every live server",
            )
        )
    if args.json:
        _out(
            json.dumps(
                {"ok": not problems, "servers": manifests, "problems": [p.as_json() for p in problems]},
                indent=2,
            )
        )
    else:
        for problem in problems:
            _out(problem.render())
        verdict = "ok" if not problems else f"{len(problems)} problem(s)"
        _out(
            f"checked {len(manifests) + len({p.file for p in problems})} file(s): {verdict}"
            + (f"; servers: {', '.join(manifests)}" if manifests else "")
        )
    return EXIT_OK if not problems else EXIT_FAILED


def _base_image(args: argparse.Namespace) -> int:
    from pipeline.baseimage import ensure_base_image
    from pipeline.engine import ensure_engine

    settings = settings_mod.load(_config_path(args))
    host = ensure_engine(_out)
    ensure_base_image(host, settings.state_dir / "cache", _out, force=args.force)
    return EXIT_OK


def _engine(args: argparse.Namespace) -> int:
    from pipeline.engine import ensure_engine

    ensure_engine(_out)
    return EXIT_OK


def _firewall(args: argparse.Namespace) -> int:
    from pipeline import firewall

    settings = settings_mod.load(_config_path(args))
    if not args.check:
        for line in firewall.install(settings):
            _out(f"firewall: {line}")
    status = firewall.check(settings)
    (_out if status.ok else _err)(f"firewall: {'ok' if status.ok else 'missing'}: {status.detail}")
    return EXIT_OK if status.ok else EXIT_FAILED


def _init_repo(args: argparse.Namespace) -> int:
    from pipeline.hook import init_repo

    path, remotes = init_repo(settings_mod.load(_config_path(args)), args.name)
    _out(f"bare repo ready: {path}")
    for line in remotes:
        _out(line)
    return EXIT_OK


def _hook(args: argparse.Namespace) -> int:
    from pipeline.hook import pre_receive

    settings = settings_mod.load(_config_path(args))
    return pre_receive(settings, args.repo, sys.stdin, _out)


def _deploy(args: argparse.Namespace) -> int:
    from pipeline.hook import deploy_ref

    ok = deploy_ref(settings_mod.load(_config_path(args)), args.repo, args.ref, _out)
    return EXIT_OK if ok else EXIT_FAILED


def _serve(args: argparse.Namespace) -> int:
    from pipeline.serve import server

    server(settings_mod.load(_config_path(args)), args.port).run()
    return EXIT_OK


def _up(args: argparse.Namespace) -> int:
    from pipeline.serve import up

    up(settings_mod.load(_config_path(args)), Path.cwd(), _out, args.port)
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from pipeline.status import render

    settings = settings_mod.load(_config_path(args))
    _out(render(settings, _store(settings)))
    return EXIT_OK


def _releases(args: argparse.Namespace) -> int:
    settings = settings_mod.load(_config_path(args))
    found = _store(settings).releases(args.server)
    if not found:
        _err(f"no releases of {args.server!r}")
        return EXIT_FAILED
    for r in found:
        _out(f"{r.name:>5}  {r.status:<9} v{r.version:<10} {r.commit_sha[:12]}  {r.image}")
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    from pipeline import control
    from pipeline.hook import render

    settings = settings_mod.load(_config_path(args))
    found = _store(settings).releases(args.server)
    if args.release:
        number = int(args.release.lstrip("r"))
        target = next((r for r in found if r.number == number), None)
    else:
        target = next((r for r in found if r.status == "previous"), None)
    if target is None:
        _err(
            f"{args.server}: no release {args.release or '(previous)'} to roll back to; "
            f"see `central-mcp releases {args.server}`"
        )
        return EXIT_FAILED
    body = {
        "source": DeploySource.ROLLBACK,
        "repo": target.repo,
        "ref": "rollback",
        "commit": target.commit_sha,
        "rollback": [target.server, target.number],
    }
    last = control.stream(
        control.Control.load(settings.state_dir), "/api/deploys", body, lambda e: _out(render(e))
    )
    return EXIT_OK if str(last.get("text", "")).startswith("succeeded") else EXIT_FAILED


def _client_config(args: argparse.Namespace) -> int:
    from pipeline import registry

    settings = settings_mod.load(_config_path(args))
    project = settings.project(args.project)
    if project is None:
        known = ", ".join(p.name for p in settings.projects) or "none"
        _err(f"no project {args.project!r} in deploy.yaml (projects: {known})")
        return EXIT_FAILED
    releases = registry.visible(_store(settings).live_releases(), project)
    _out(json.dumps(registry.client_config(settings, releases, args.fmt), indent=2))
    return EXIT_OK


def _webhook_test(args: argparse.Namespace) -> int:
    from pipeline import source
    from pipeline.hook import repo_path
    from pipeline.webhook import sample_curl

    settings = settings_mod.load(_config_path(args))
    repo = settings.repo(args.repo)
    commit = args.commit
    if not commit:
        try:
            commit = source.resolve(repo_path(settings, repo.name), repo.branch)
        except CentralMCPError:
            commit = "f" * 40
    _out(sample_curl(settings, repo, commit, os.environ))
    return EXIT_OK


def _systemd_unit(args: argparse.Namespace) -> int:
    settings = settings_mod.load(_config_path(args))
    template = (Path(__file__).parent / "systemd" / "central-mcp.service").read_text()
    _out(
        template.format(
            user=args.user,
            workdir=Path.cwd(),
            state_dir=settings.state_dir,
            python=sys.executable,
            config=settings.config_path.resolve(),
        )
    )
    return EXIT_OK


def _store(settings: settings_mod.Settings) -> Store:
    return Store(settings.state_dir / "central-mcp.db")


def _keys_create(args: argparse.Namespace) -> int:
    from pipeline.proxy.access import create_key

    settings = settings_mod.load(_config_path(args))
    try:
        token = create_key(_store(settings), settings, args.project)
    except ValueError as exc:
        _err(f"error: {exc}")
        return EXIT_FAILED
    _out(token)
    _err(
        f"key for project {args.project!r} created; it is shown only now. Clients send it as "
        "`Authorization: Bearer <key>`."
    )
    return EXIT_OK


def _keys_list(args: argparse.Namespace) -> int:
    for key in _store(settings_mod.load(_config_path(args))).api_keys():
        state = "revoked" if key["revoked_at"] else "active"
        _out(f"{key['id']}  {key['project']:<20} {state}")
    return EXIT_OK


def _keys_revoke(args: argparse.Namespace) -> int:
    if _store(settings_mod.load(_config_path(args))).revoke_key(args.key_id):
        _out(f"revoked {args.key_id} (takes effect within a few seconds)")
        return EXIT_OK
    _err(f"no active key {args.key_id!r}; see `central-mcp keys list`")
    return EXIT_FAILED


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is None:
        return settings_mod.DEFAULT_CONFIG
    path: Path = args.config
    if not path.is_file():
        raise ConfigError(
            [
                Problem(
                    str(path),
                    0,
                    0,
                    "$",
                    "no such config file",
                    "fix --config, or leave it out to use ./deploy.yaml",
                )
            ]
        )
    return path


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
