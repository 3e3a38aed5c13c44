"""pipeline/prepare.py: what a deploy records of each server it prepared."""

from __future__ import annotations

from pipeline.prepare import Outcome
from pipeline.secrets import Masker
from pipeline.states import ServerOutcome


def test_a_failure_reason_is_stored_with_secret_values_masked() -> None:
    """A container that echoes a secret into its gate failure never puts it on the deploy pages."""
    outcome = Outcome(ServerOutcome.FAILED, 2, reason="initialize answered HTTP 500: token=s3cr3t-value")

    stored = outcome.as_json(Masker(["s3cr3t-value"]))

    assert stored == {"outcome": "failed", "release": 2, "reason": "initialize answered HTTP 500: token=****"}


def test_only_gated_and_swapped_servers_carry_timings_and_tools() -> None:
    """The stored shape is the one the pages read: timings and tools only where a gate passed."""
    gated = Outcome(ServerOutcome.SWAPPED, 3, timings={"build": 0.1}, tools=["greet"])
    unchanged = Outcome(ServerOutcome.UNCHANGED, 1)

    assert gated.as_json(str) == {
        "outcome": "swapped",
        "release": 3,
        "timings": {"build": 0.1},
        "tools": ["greet"],
    }
    assert unchanged.as_json(str) == {"outcome": "unchanged", "release": 1}
