"""The `central-mcp` command: the one place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline import settings as settings_mod
from pipeline.errors import CentralMCPError, ConfigError
from pipeline.manifest import check_tree

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
    parser.add_argument("--config", type=Path, default=settings_mod.DEFAULT_CONFIG,
                        help="deploy.yaml to use (default: ./deploy.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate deploy.yaml and every server manifest")
    check.add_argument("path", nargs="?", type=Path, default=Path("."),
                       help="repository root to check (default: .)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=_check)

    base = sub.add_parser("base-image", help="make the local Python base image when missing")
    base.add_argument("--force", action="store_true", help="make it again even if present")
    base.set_defaults(handler=_base_image)

    engine = sub.add_parser("engine", help="make sure a Docker engine answers (starts dockerd)")
    engine.set_defaults(handler=_engine)
    return parser


def _check(args: argparse.Namespace) -> int:
    problems = []
    manifests = []
    try:
        settings = settings_mod.load(_config_path(args))
    except ConfigError as exc:
        problems.extend(exc.problems)
        settings = settings_mod.Settings(config_path=args.config, state_dir=Path("."))
    report = check_tree(args.path, settings)
    problems.extend(report.problems)
    manifests = [m.name for m in report.manifests]
    if args.json:
        _out(json.dumps({"ok": not problems, "servers": manifests,
                         "problems": [p.as_json() for p in problems]}, indent=2))
    else:
        for problem in problems:
            _out(problem.render())
        verdict = "ok" if not problems else f"{len(problems)} problem(s)"
        _out(f"checked {len(manifests) + len({p.file for p in problems})} file(s): {verdict}"
             + (f"; servers: {', '.join(manifests)}" if manifests else ""))
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


def _config_path(args: argparse.Namespace) -> Path:
    path: Path = args.config
    return path


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
