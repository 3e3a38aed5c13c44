"""What the bridge counts of its stdio processes, answered at STATS_PATH for the provider's probes.

Kept apart from the MCP endpoint's path, which is the only one the proxy forwards to, so only the
provider (the monitor, on the server's network) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

STATS_PATH = "/.central-mcp/bridge"
MAX_REASON = 200  # characters of the last exit's reason kept


@dataclass
class Counts:
    """Processes started, ended by the bridge (session over, idle, drain), and ended on their own."""

    started: int = 0
    stopped: int = 0
    exited: int = 0  # exited, crashed, or ended for junk or an overlong line on stdout
    last_exit: str = ""

    def ended(self, on_its_own: bool, reason: str) -> None:
        """Count one process that ended."""
        if on_its_own:
            self.exited += 1
            self.last_exit = reason[:MAX_REASON]
        else:
            self.stopped += 1

    @property
    def running(self) -> int:
        """Processes started and not yet ended."""
        return self.started - self.stopped - self.exited


COUNTS = Counts()  # one bridge per container process: its children are counted here
