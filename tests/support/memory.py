"""How far this process's peak memory rises during a block: proof that a read is bounded (Linux)."""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # proc(5): writing 5 to clear_refs resets the peak resident set size (VmHWM)


@contextmanager
def peak_growth() -> Iterator[Callable[[], int]]:
    """Reset the process's peak RSS; yield a function giving how many bytes the peak has risen above
    the RSS at the start (every thread counts: the proxy, its upstream and the client alike)."""
    gc.collect()
    CLEAR_REFS.write_text(RESET_PEAK)
    start = _kib("VmRSS")
    yield lambda: max(0, _kib("VmHWM") - start) * 1024


def _kib(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    assert found is not None, f"/proc/self/status has no {field}"
    return int(found.group(1))
