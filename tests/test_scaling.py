"""The autoscaler's decisions: up after load stays high for a window, down after it stays low, with
cool-downs, within [min, max]; and the manifest's `scale` with deploy.yaml's defaults."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from pipeline.config.manifest import Scale, from_data, scale_of
from pipeline.config.settings import ScaleConfig, Settings
from pipeline.context import Context
from pipeline.proxy.router import Target, TargetGroup
from pipeline.scaling import Autoscaler, Bounds, Step, Trend
from tests.support.proxy_rig import upstream

BOUNDS = Bounds(min=1, max=3, target_inflight=2.0, window=5.0, cooldown=10.0)


def _group(*inflight: int) -> TargetGroup:
    targets = []
    for n, count in enumerate(inflight):
        target = Target(upstream("x", 1000 + n, f"c{n}"))
        target.inflight = count
        targets.append(target)
    return TargetGroup("x", 1, tuple(targets))


def _scaler() -> Autoscaler:
    return Autoscaler(cast(Context, None), clock=lambda: 0.0)


def test_a_replica_is_added_only_after_load_stays_high_for_the_window() -> None:
    """High load for less than the window holds; for the whole window it scales up."""
    scaler = _scaler()
    busy = _group(5)
    assert scaler.decide("x", busy, BOUNDS, 100.0) is Step.HOLD
    assert scaler.decide("x", busy, BOUNDS, 104.0) is Step.HOLD
    assert scaler.decide("x", busy, BOUNDS, 105.0) is Step.UP


def test_a_dip_restarts_the_window() -> None:
    """Load that falls back under the target in between starts the window again."""
    scaler = _scaler()
    assert scaler.decide("x", _group(5), BOUNDS, 100.0) is Step.HOLD
    assert scaler.decide("x", _group(2), BOUNDS, 103.0) is Step.HOLD
    assert scaler.decide("x", _group(5), BOUNDS, 106.0) is Step.HOLD
    assert scaler.decide("x", _group(5), BOUNDS, 111.0) is Step.UP


def test_never_above_max_nor_below_min() -> None:
    """A server at max holds under any load; one at min holds when idle."""
    scaler = _scaler()
    assert scaler.decide("x", _group(9, 9, 9), BOUNDS, 0.0) is Step.HOLD
    assert scaler.decide("x", _group(9, 9, 9), BOUNDS, 50.0) is Step.HOLD
    assert scaler.decide("y", _group(0), BOUNDS, 0.0) is Step.HOLD
    assert scaler.decide("y", _group(0), BOUNDS, 50.0) is Step.HOLD


def test_low_load_for_the_window_removes_a_replica_after_the_cooldown() -> None:
    """Quiet replicas scale down after the window, but not within the cool-down of the last step."""
    scaler = _scaler()
    scaler.trends["x"] = Trend(last_step=100.0)
    quiet = _group(0, 0)
    assert scaler.decide("x", quiet, BOUNDS, 100.0) is Step.HOLD
    assert scaler.decide("x", quiet, BOUNDS, 106.0) is Step.HOLD  # window passed, cool-down not
    assert scaler.decide("x", quiet, BOUNDS, 110.0) is Step.DOWN


def test_below_min_scales_up_at_once() -> None:
    """A server with fewer replicas than its min (one was lost) gets one without waiting for load."""
    scaler = _scaler()
    assert scaler.decide("x", _group(0), Bounds(2, 3, 2.0, 5.0, 10.0), 0.0) is Step.UP


def test_manifest_scale_defaults_keep_one_container() -> None:
    """No `scale` in a manifest: nothing set, so deploy.yaml's defaults (1, 1) apply; durations parse."""
    assert scale_of({}) == Scale()
    assert scale_of({"scale": {"min": 2, "max": 4, "window": "3s", "cooldown": "500ms"}}) == Scale(
        2, 4, None, 3.0, 0.5
    )
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=Path("."))
    assert settings.scale == ScaleConfig(min=1, max=1)
    manifest = from_data({"name": "x", "version": "1", "description": "d", "transport": "http"}, "x")
    assert manifest.scale == Scale()
