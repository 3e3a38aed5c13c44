"""pipeline/reload.py: deploy.yaml read again, validated first, merged into the running settings."""

from __future__ import annotations

from pathlib import Path

from pipeline import reload
from pipeline.config import settings

GOOD = "listen: {port: 8900}\nproxy: {keepalive: 20s}\n"


def _running(tmp_path: Path, text: str = GOOD) -> settings.Settings:
    """Settings loaded from tmp_path/deploy.yaml as a serve process started with them."""
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    return settings.load(path, env={})


def test_live_settings_are_applied_and_the_listen_address_waits_for_a_restart(tmp_path: Path) -> None:
    """Projects and proxy timeouts change at once; a new listen port is kept, named as needing a restart."""
    running = _running(tmp_path)
    running.config_path.write_text(
        "listen: {port: 8901}\nproxy: {keepalive: 5s, drain_timeout: 3s}\nprojects:\n  - name: web\n"
    )
    merged, outcome = reload.read(running, settings.Listen())
    assert outcome.ok and not outcome.problems
    assert set(outcome.applied) == {"projects", "proxy.keepalive", "proxy.drain_timeout"}
    assert outcome.restart == ("port",)
    assert (merged.port, merged.proxy.keepalive, merged.proxy.drain_timeout) == (8900, 5.0, 3.0)
    assert [p.name for p in merged.projects] == ["web"]
    assert "needs a restart to change: port" in outcome.summary()


def test_an_invalid_deploy_yaml_is_refused_and_the_running_settings_stay(tmp_path: Path) -> None:
    """A reload of a deploy.yaml with problems changes nothing and returns every problem, located."""
    running = _running(tmp_path)
    running.config_path.write_text("listen: {port: 8900}\nproxy: {keepalive: 90s}\ncolour: blue\n")
    merged, outcome = reload.read(running, settings.Listen())
    assert merged is running and not outcome.ok and not outcome.applied
    assert len(outcome.problems) == 2 and any("$.colour" in p for p in outcome.problems)
    assert outcome.summary().startswith("reload refused: deploy.yaml has 2 problem(s)")


def test_serves_overrides_hold_across_a_reload(tmp_path: Path) -> None:
    """`serve --port` stays in force: a changed listen.port under an override needs no restart."""
    running, _ = settings.listening(_running(tmp_path), settings.Listen(port=9500))
    running.config_path.write_text(GOOD.replace("8900", "8901"))
    merged, outcome = reload.read(running, settings.Listen(port=9500))
    assert outcome.ok and outcome.applied == () and outcome.restart == ()
    assert merged.port == 9500
