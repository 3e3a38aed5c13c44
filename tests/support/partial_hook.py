"""A pre-receive hook for tests/test_partial.py: takes the push's partial snapshot inside git's
quarantine, as pipeline/hook.py does, and writes what it holds to a JSON file.

Usage (from the hook shim): python -m tests.support.partial_hook CONFIG.json
CONFIG names `out` (the report), `state` (snapshots' parent), `live` (server -> fingerprint),
`max_bytes` and `max_files`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline import hook, partial, source
from pipeline.config.manifest import check_tree
from pipeline.config.settings import Repo, Settings
from pipeline.errors import SourceError
from pipeline.plan import fingerprint

REPO = Repo(name="big")


def main(config_path: str) -> int:
    """Snapshot every pushed ref; report files, exported folders and fingerprints."""
    config = json.loads(Path(config_path).read_text())
    state = Path(config["state"])
    settings = Settings(config_path=state / "deploy.yaml", state_dir=state, repos=(REPO,))
    bounds = source.Bounds(config["max_bytes"], config["max_files"])
    select = partial.selector(settings, REPO, config["live"])
    for update in hook.parse(sys.stdin):
        workdir = source.new_workdir(state / "snapshots")
        try:
            snap = source.take(
                Path.cwd(),
                REPO.name,
                update.ref,
                update.new,
                workdir,
                None,
                None,
                bounds,
                REPO.manifests,
                select,
            )
        except SourceError as exc:
            print(f"push rejected: {exc}")
            return 1
        report = check_tree(snap.root, settings, REPO.manifests, REPO, snap.holds)
        files = sorted(p.relative_to(snap.root).as_posix() for p in snap.root.rglob("*") if p.is_file())
        prints = {
            m.name: fingerprint(m, partial.inputs(m, snap), settings.build_args) for m in report.manifests
        }
        problems = [p.render() for p in report.problems]
        result = {"files": files, "exported": snap.exported, "prints": prints, "problems": problems}
        Path(config["out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
