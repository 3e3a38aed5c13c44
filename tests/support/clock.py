"""The one fake clock of the tests: a monotonic time that moves only when the test moves it."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock for injection: call it for the time; `advance` or `sleep` moves it at once."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the time forward by `seconds`."""
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        """An injectable sleep that returns at once, having moved the time forward by `seconds`."""
        self.advance(seconds)
