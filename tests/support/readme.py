"""The README's own examples, read from README.md so tests and documentation cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def yaml_example(section: str) -> str:
    """The first ```yaml block under the README heading `## <section>`."""
    text = README.read_text()
    start = text.index(f"\n## {section}")
    found = re.search(r"```yaml\n(.*?)```", text[start:], re.DOTALL)
    assert found, f"README section {section!r} has no yaml example"
    return found.group(1)
