"""The `central-mcp` command: the one place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline import stdio
from pipeline.config import settings as settings_mod
from pipeline.config.manifest import MANIFEST_NAME, Manifest, check_tree
from pipeline.contract import Surface
from pipeline.errors import CentralMCPError, ConfigError, DeployError, Problem, SecretsError, StateError
from pipeline.states import DeploySource
from pipeline.store import DATABASE, Store

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
ADMIN_TOKEN_ENV = "CENTRAL_MCP_ADMIN_TOKEN"  # `check --against`: never on the command line

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
    _config_option(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)
    # Every sub-command takes --config too (`central-mcp check --config x.yaml`); SUPPRESS keeps
    # a sub-command without it from overwriting a --config given before the sub-command.
    common = argparse.ArgumentParser(add_help=False)
    _config_option(common, argparse.SUPPRESS)

    check = sub.add_parser("check", parents=[common], help="validate deploy.yaml and every server manifest")
    check.add_argument(
        "path", nargs="?", type=Path, default=Path("."), help="repository root to check (default: .)"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--against",
        metavar="URL",
        help="also compare the manifests with what the provider at URL has live (its admin token from "
        f"${ADMIN_TOKEN_ENV})",
    )
    check.add_argument(
        "--lists",
        metavar="SERVER=FILE",
        action="append",
        default=[],
        help="with --against: a server's new tools/prompts/resources as JSON (e.g. a tools/list result), "
        "so the contract diff and any refusal show before the push",
    )
    check.add_argument(
        "--message", default="", help="with --lists: the commit message to judge (e.g. [allow-breaking])"
    )
    check.set_defaults(handler=_check)

    base = sub.add_parser(
        "base-image", parents=[common], help="make a local base image (Python, or Node) when missing"
    )
    base.add_argument("--force", action="store_true", help="make it again even if present")
    base.add_argument(
        "--runtime",
        choices=("python", "node"),
        default="python",
        help="python: central-mcp/python:3.11 (default); node: central-mcp/node:18, for npm packages",
    )
    base.set_defaults(handler=_base_image)

    engine = sub.add_parser(
        "engine", parents=[common], help="make sure a Docker engine answers (starts dockerd)"
    )
    engine.add_argument(
        "--swarm", action="store_true", help="also make it a single-node Swarm manager (idempotent)"
    )
    engine.add_argument(
        "--advertise-addr",
        default=None,
        metavar="ADDR",
        help="the address other nodes reach this manager on (default: the default route's interface)",
    )
    engine.add_argument(
        "--address-pool",
        default=None,
        metavar="CIDR",
        help="where overlay networks' /24 subnets come from (default 10.214.0.0/16)",
    )
    engine.set_defaults(handler=_engine)
    firewall = sub.add_parser(
        "firewall", help="install the host firewall that isolates server networks (root; make setup runs it)"
    )
    firewall.add_argument("--check", action="store_true", help="only say whether it is in place")
    firewall.set_defaults(handler=_firewall)

    init = sub.add_parser(
        "init-repo", parents=[common], help="create the VM's bare repo with the deploy hook"
    )
    init.add_argument("name", nargs="?", help="repo name from deploy.yaml (default: the first)")
    init.set_defaults(handler=_init_repo)

    hook = sub.add_parser("hook", parents=[common], help="run a git hook (called by the installed shims)")
    hook.add_argument("hook_name", choices=["pre-receive"])
    hook.add_argument("--repo", required=True)
    hook.set_defaults(handler=_hook)

    deploy = sub.add_parser("deploy", parents=[common], help="deploy a ref of the VM's repo by hand")
    deploy.add_argument("--repo", help="repo name (default: the first in deploy.yaml)")
    deploy.add_argument("--ref", help="branch, tag or commit (default: the deploy branch)")
    deploy.set_defaults(handler=_deploy)

    serve = sub.add_parser("serve", parents=[common], help="run the proxy and the control plane")
    _listen_options(serve)
    serve.set_defaults(handler=_serve)

    up = sub.add_parser("up", parents=[common], help="serve, and deploy this checkout's servers (make run)")
    _listen_options(up)
    up.set_defaults(handler=_up)

    reload = sub.add_parser("reload", parents=[common], help="make the running serve re-read deploy.yaml")
    reload.set_defaults(handler=_reload)

    status = sub.add_parser(
        "status", parents=[common], help="live servers, releases, health and the last deploy"
    )
    status.set_defaults(handler=_status)

    releases = sub.add_parser("releases", parents=[common], help="list a server's releases")
    releases.add_argument("server")
    releases.set_defaults(handler=_releases)

    diff = sub.add_parser("diff", parents=[common], help="the tool contract diff between two releases")
    diff.add_argument("server")
    diff.add_argument("first", nargs="?", help="e.g. r3 (default: the release live before the newer one)")
    diff.add_argument("second", nargs="?", help="e.g. r4 (default: the live release)")
    diff.set_defaults(handler=_diff)

    promote = sub.add_parser("promote", parents=[common], help="promote a server's running canary to 100%%")
    promote.add_argument("server")
    promote.set_defaults(handler=_promote)

    rollback = sub.add_parser(
        "rollback", parents=[common], help="roll back a running canary, or make an earlier release live again"
    )
    rollback.add_argument("server")
    rollback.add_argument("release", nargs="?", help="e.g. r3 (default: the previous release)")
    rollback.set_defaults(handler=_rollback)

    config = sub.add_parser(
        "client-config", parents=[common], help="print a ready-to-paste MCP client config"
    )
    config.add_argument("project", nargs="?", help="a project of deploy.yaml (none when it lists none)")
    config.add_argument(
        "--format",
        dest="fmt",
        default="vscode",
        choices=["vscode", "cursor", "claude-code", "claude-desktop"],
    )
    config.add_argument(
        "--per-server",
        action="store_true",
        help="one entry per server at /mcp/<server> instead of the project's one endpoint /mcp",
    )
    config.set_defaults(handler=_client_config)

    webhook = sub.add_parser(
        "webhook-test", parents=[common], help="print a curl line with a signed sample push"
    )
    webhook.add_argument("repo", nargs="?", help="repo name (default: the first)")
    webhook.add_argument("--commit", help="commit the sample push names (default: the branch head)")
    webhook.set_defaults(handler=_webhook_test)

    unit = sub.add_parser("systemd-unit", parents=[common], help="print a systemd unit for this checkout")
    unit.add_argument("--user", default=os.environ.get("USER", "root"))
    unit.set_defaults(handler=_systemd_unit)

    keys = sub.add_parser("keys", parents=[common], help="project API keys for /mcp/*")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create", parents=[common], help="create a key (printed once; only a hash is kept)"
    )
    create.add_argument("project")
    create.set_defaults(handler=_keys_create)
    keys_sub.add_parser("list", parents=[common], help="list keys (ids, projects, state)").set_defaults(
        handler=_keys_list
    )
    revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys_revoke)

    secret = sub.add_parser(
        "secret", parents=[common], help="the server-secret store (values never on the command line)"
    )
    secret_sub = secret.add_subparsers(dest="secret_command", required=True)
    put = secret_sub.add_parser(
        "set", parents=[common], help="store a server secret; its value is read from stdin"
    )
    put.add_argument("name")
    put.set_defaults(handler=_secret_set)
    secret_sub.add_parser("list", parents=[common], help="names and grants (never values)").set_defaults(
        handler=_secret_list
    )
    remove = secret_sub.add_parser("rm", parents=[common], help="remove a server secret from the store")
    remove.add_argument("name")
    remove.set_defaults(handler=_secret_rm)
    return parser


def _config_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        help="deploy.yaml to use (default: ./deploy.yaml; for `check PATH`, PATH/deploy.yaml when "
        "it exists; defaults apply if it is missing)",
    )


def _check(args: argparse.Namespace) -> int:
    problems: list[Problem] = []
    config = _check_config(args)
    try:
        settings = settings_mod.load(config)
    except ConfigError as exc:
        problems.extend(exc.problems)
        settings = settings_mod.Settings(config_path=config, state_dir=Path("."))
    report = check_tree(args.path, settings)
    problems.extend(report.problems)
    problems.extend(_unstored_secrets(settings, report.manifests))
    if not report.manifests and not report.problems:
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
    folders = {m.name: m.folder for m in report.manifests}
    kinds = {m.name: stdio.describe(m.raw) for m in report.manifests if stdio.describe(m.raw)}
    against = _against(args, report.manifests) if args.against and not problems else None
    _report(problems, folders, args.json, kinds, against)
    refused = against is not None and against["refused"]
    return EXIT_OK if not problems and not refused else EXIT_FAILED


def _against(args: argparse.Namespace, manifests: Sequence[Manifest]) -> dict[str, Any]:
    """What a push of `manifests` would meet at the provider `args.against`: its findings, and whether
    it would certainly be refused (known only for servers given with --lists)."""
    from pipeline import surfaces

    live = surfaces.fetch_live(args.against, os.environ.get(ADMIN_TOKEN_ENV, ""))
    given = dict(_given_lists(item) for item in args.lists)
    lines, refused = surfaces.foresee(manifests, live, given, args.message)
    return {"url": args.against, "findings": lines, "refused": refused}


def _given_lists(item: str) -> tuple[str, Surface]:
    """`SERVER=FILE` read as that server's lists: {"tools": [...], ...} or a bare tools array."""
    server, sep, file = item.partition("=")
    if not sep or not server or not file:
        raise DeployError(f"--lists {item!r}: write SERVER=FILE")
    try:
        data = json.loads(Path(file).read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"--lists {item!r}: cannot read {file} as JSON: {exc}") from exc
    return server, Surface.from_json({"tools": data} if isinstance(data, list) else data)


def _diff(args: argparse.Namespace) -> int:
    from pipeline import contract, surfaces

    store = _existing_store(settings_mod.load(_config_path(args)))
    older, newer = surfaces.pair(store, args.server, args.first, args.second)
    found = contract.diff(surfaces.of_release(store, older), surfaces.of_release(store, newer))
    _out(f"{args.server}: {older.name} (v{older.version}) -> {newer.name} (v{newer.version})")
    for line in [d.render() for d in found] or ["no change to the contract"]:
        _out(f"  {line}")
    if any(d.breaking for d in found):
        bump = "a major bump" if contract.is_major_bump(older.version, newer.version) else "no major bump"
        _out(f"  breaking: yes ({bump})")
    return EXIT_OK


def _unstored_secrets(settings: settings_mod.Settings, manifests: Sequence[Manifest]) -> list[Problem]:
    """Secrets a manifest names that the VM's store lacks (only where this machine has the store)."""
    from pipeline.secrets import SERVER_SECRETS_DIR, SecretStore

    store = SecretStore(settings.state_dir / SERVER_SECRETS_DIR)
    if not store.path.is_dir():
        return []  # not the VM (or no secret stored yet): the grants were checked, the values cannot be
    held = set(store.names())
    return [
        Problem(
            f"{m.folder}/{MANIFEST_NAME}",
            0,
            0,
            "$.run.secrets",
            f"secret {name} is not in this VM's server-secret store ({store.path})",
            f"run `central-mcp secret set {name}` (the value is read from stdin)",
        )
        for m in manifests
        for name in m.secrets
        if name not in held
    ]


def _report(
    problems: list[Problem],
    folders: dict[str, str],
    as_json: bool,
    kinds: dict[str, str] | None = None,
    against: dict[str, Any] | None = None,
) -> None:
    """Print check's verdict; each server with the folder it comes from (names need not match), and
    for a stdio server how it is shared and which protocol era it offers; then, with --against, what
    a push would meet at that provider."""
    kinds = kinds or {}
    if as_json:
        body = {
            "ok": not problems and not (against or {}).get("refused"),
            "servers": list(folders),
            "folders": folders,
            **({"kinds": kinds} if kinds else {}),
            "problems": [p.as_json() for p in problems],
            **({"against": against} if against is not None else {}),
        }
        _out(json.dumps(body, indent=2))
        return
    for problem in problems:
        _out(problem.render())
    verdict = "ok" if not problems else f"{len(problems)} problem(s)"
    servers = ", ".join(
        f"{name} ({folder}/{'; ' + kinds[name] if name in kinds else ''})" for name, folder in folders.items()
    )
    _out(
        f"checked {len(folders) + len({p.file for p in problems})} file(s): {verdict}"
        + (f"; servers: {servers}" if servers else "")
    )
    if against is not None:
        _out(f"against {against['url']}:")
        for line in against["findings"]:
            _out(f"  {line}")


def _base_image(args: argparse.Namespace) -> int:
    from pipeline.baseimage import RUNTIMES, ensure_base_image
    from pipeline.engine import ensure_engine

    settings = settings_mod.load(_config_path(args))
    host = ensure_engine(_out)
    runtime = RUNTIMES[args.runtime]
    ensure_base_image(host, settings.state_dir / "cache", _out, force=args.force, runtime=runtime)
    return EXIT_OK


def _engine(args: argparse.Namespace) -> int:
    from pipeline.engine import ensure_engine, ensure_swarm

    host = ensure_engine(_out)
    if args.swarm:
        avoid = (settings_mod.load(_config_path(args)).network.pool,)
        ensure_swarm(host, _out, args.advertise_addr, args.address_pool, avoid=avoid)
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


def _listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="port to listen on (overrides listen.port)")
    parser.add_argument("--host", help="address to listen on (overrides listen.host)")
    parser.add_argument(
        "--public-url",
        help="the URL clients reach this provider at (overrides public_url; by default it follows "
        "--host/--port unless deploy.yaml's public_url names a front elsewhere)",
    )


def _listening(args: argparse.Namespace) -> tuple[settings_mod.Settings, settings_mod.Listen]:
    """deploy.yaml with serve's --host/--port/--public-url applied; warnings go to stderr."""
    listen = settings_mod.Listen(args.host, args.port, args.public_url)
    settings, warnings = settings_mod.listening(settings_mod.load(_config_path(args)), listen)
    for warning in warnings:
        _err(f"warning: {warning}")
    return settings, listen


def _serve(args: argparse.Namespace) -> int:
    from pipeline.serve import server

    server(*_listening(args)).run()
    return EXIT_OK


def _up(args: argparse.Namespace) -> int:
    from pipeline.serve import up

    settings, listen = _listening(args)
    up(settings, Path.cwd(), _out, listen)
    return EXIT_OK


def _reload(args: argparse.Namespace) -> int:
    from pipeline import control

    state_dir = settings_mod.state_dir_of(_config_path(args))
    outcome = control.reload(control.Control.load(state_dir))
    for line in (*outcome.get("problems", ()), *outcome.get("warnings", ())):
        _err(str(line))
    ok = bool(outcome.get("ok"))
    (_out if ok else _err)(str(outcome.get("summary", "")))
    return EXIT_OK if ok else EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    from pipeline.status import render

    settings = settings_mod.load(_config_path(args))
    _out(render(settings, _existing_store(settings)))
    return EXIT_OK


def _releases(args: argparse.Namespace) -> int:
    settings = settings_mod.load(_config_path(args))
    found = _existing_store(settings).releases(args.server)
    if not found:
        _err(f"no releases of {args.server!r}")
        return EXIT_FAILED
    for r in found:
        _out(f"{r.name:>5}  {r.status:<9} v{r.version:<10} {r.commit_sha[:12]}  {r.image}")
    return EXIT_OK


def _promote(args: argparse.Namespace) -> int:
    said = _say_to_canary(args, "promote")
    return EXIT_FAILED if said is None else said


def _say_to_canary(args: argparse.Namespace, command: str) -> int | None:
    """Promote or roll back a running canary; its exit code, or None when the server has none."""
    from pipeline import control

    settings = settings_mod.load(_config_path(args))
    status, answer = control.canary(control.Control.load(settings.state_dir), args.server, command)
    if status != 200:
        if command == "promote" or status != 404:
            _err(str(answer.get("error", answer)))
        return None if status == 404 else EXIT_FAILED
    _out(f"{args.server}: canary r{answer['canary']['release']} {answer['phase']}: {answer['reason']}")
    return (
        EXIT_OK if answer["phase"] == ("promoted" if command == "promote" else "rolled-back") else EXIT_FAILED
    )


def _rollback(args: argparse.Namespace) -> int:
    from pipeline import control
    from pipeline.hook import render

    if not args.release and (said := _say_to_canary(args, "rollback")) is not None:
        return said
    settings = settings_mod.load(_config_path(args))
    found = _existing_store(settings).releases(args.server)
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
    store = _existing_store(settings)
    keyed = bool(settings.projects)
    known = ", ".join(p.name for p in settings.projects)
    if not keyed and args.project:
        _err(
            f"deploy.yaml lists no projects, so there is no project {args.project!r} and /mcp/* takes no "
            "key: run `central-mcp client-config` without a project for every live server, or add "
            "`projects:` to deploy.yaml (then create keys with `central-mcp keys create PROJECT`)"
        )
        return EXIT_FAILED
    project = settings.project(args.project) if args.project else None
    if keyed and project is None:
        _err(f"name one of the projects in deploy.yaml ({known}), not {args.project!r}")
        return EXIT_FAILED
    releases = registry.visible(store.live_releases(), project)
    whose = f"project {project.name!r}" if project else "clients (deploy.yaml lists no projects)"
    if not releases:
        _err(f"no live server is visible to {whose} in {settings.state_dir}; push a server first")
        return EXIT_FAILED
    if not keyed:
        _err("deploy.yaml lists no projects: /mcp/* takes no key, so this config carries none")
    document = registry.client_config(settings, releases, args.fmt, keyed=keyed, per_server=args.per_server)
    _out(json.dumps(document, indent=2))
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
    return Store(settings.state_dir / DATABASE)


def _existing_store(settings: settings_mod.Settings) -> Store:
    """The serve process's database; a state dir that has none is an error, never an empty answer."""
    path = settings.state_dir / DATABASE
    if not path.is_file():
        raise StateError(
            f"no central-mcp database in {settings.state_dir}: this is not the state directory the "
            f"provider serves from; fix state_dir in {settings.config_path} or CENTRAL_MCP_STATE_DIR "
            "(or --config) so this command and `central-mcp serve` read the same one"
        )
    return _store(settings)


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
    for key in _existing_store(settings_mod.load(_config_path(args))).api_keys():
        state = "revoked" if key["revoked_at"] else "active"
        _out(f"{key['id']}  {key['project']:<20} {state}")
    return EXIT_OK


def _keys_revoke(args: argparse.Namespace) -> int:
    if _existing_store(settings_mod.load(_config_path(args))).revoke_key(args.key_id):
        _out(f"revoked {args.key_id} (takes effect within a few seconds)")
        return EXIT_OK
    _err(f"no active key {args.key_id!r}; see `central-mcp keys list`")
    return EXIT_FAILED


def _secret_set(args: argparse.Namespace) -> int:
    from pipeline.secrets import SERVER_SECRETS_DIR, SecretStore, check_name

    settings = settings_mod.load(_config_path(args))
    name = check_name(args.name)
    if name in settings.credential_names():
        _err(
            f"error: {name} names one of the provider's own credentials in {settings.config_path}; "
            "a server secret needs a name of its own"
        )
        return EXIT_FAILED
    value = _read_secret(name)
    if not value:
        _err(f"error: no value for {name} on stdin; nothing stored")
        return EXIT_FAILED
    SecretStore(settings.state_dir / SERVER_SECRETS_DIR).set(name, value)
    grants = _grants(settings, name)
    _err(
        f"stored {name} ({len(value)} characters)"
        + (
            f"; granted to {grants}"
            if grants
            else f"; not granted yet: add it under repos[].secrets in {settings.config_path}"
        )
        + ". A running server gets a new value when its container next starts (a deploy that changes it, "
        "a restart)."
    )
    return EXIT_OK


def _read_secret(name: str) -> str:
    """The value from stdin: typed without echo at a terminal, else piped (one final newline dropped)."""
    from pipeline.secrets import MAX_SECRET_BYTES

    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"value of {name} (not echoed): ")
    data = sys.stdin.buffer.read(MAX_SECRET_BYTES + 2)
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretsError(f"the value of {name} on stdin is not UTF-8 text") from exc


def _secret_list(args: argparse.Namespace) -> int:
    from pipeline.secrets import SERVER_SECRETS_DIR, SecretStore

    settings = settings_mod.load(_config_path(args))
    stored = set(SecretStore(settings.state_dir / SERVER_SECRETS_DIR).names())
    granted = {g.name for r in settings.repos for g in r.secrets}
    for name in sorted(stored | granted):
        grants = _grants(settings, name) or "not granted to any repo or server"
        state = "" if name in stored else f"  (NOT STORED: `central-mcp secret set {name}`)"
        _out(f"{name:<32} {grants}{state}")
    if not stored | granted:
        _err(f"no server secrets: `central-mcp secret set NAME`, then grant NAME in {settings.config_path}")
    return EXIT_OK


def _secret_rm(args: argparse.Namespace) -> int:
    from pipeline.secrets import SERVER_SECRETS_DIR, SecretStore

    settings = settings_mod.load(_config_path(args))
    if not SecretStore(settings.state_dir / SERVER_SECRETS_DIR).remove(args.name):
        _err(f"no server secret {args.name!r}; see `central-mcp secret list`")
        return EXIT_FAILED
    grants = _grants(settings, args.name)
    _err(
        f"removed {args.name}"
        + (
            f"; still granted to {grants}: a deploy of those servers now fails until it is set again"
            if grants
            else ""
        )
    )
    return EXIT_OK


def _grants(settings: settings_mod.Settings, name: str) -> str:
    """Where deploy.yaml grants `name`, e.g. `central-mcp (every server); other: a, b`."""
    found = []
    for repo in settings.repos:
        for grant in repo.secrets:
            if grant.name == name:
                found.append(
                    f"{repo.name}: {', '.join(grant.servers)}"
                    if grant.servers
                    else f"{repo.name} (every server)"
                )
    return "; ".join(found)


def _check_config(args: argparse.Namespace) -> Path:
    """`check PATH` reads PATH's own deploy.yaml when it has one and no --config is given."""
    own: Path = args.path / settings_mod.DEFAULT_CONFIG
    if args.config is None and own.is_file():
        return own
    return _config_path(args)


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
