"""Secret values come from the VM (the environment, or `<state>/secrets.env`), never from git.

Every piece of output a deploy produces passes through a Masker so that no value appears
in a log line, a page or an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.errors import SecretsError

SECRETS_FILE = "secrets.env"
MASK = "****"
MIN_MASKED_LENGTH = 3


def load_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines (comments and blank lines allowed; quotes stripped)."""
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise SecretsError(
                f"{path}:{number}: expected KEY=VALUE with KEY a shell-style name (the line is not "
                "shown, it may hold a secret); fix or comment out that line"
            )
        values[key.strip()] = value.strip().strip("'\"")
    return values


class Secrets:
    """Looks up secret values for servers and masks every known value in text."""

    def __init__(self, state_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.path = state_dir / SECRETS_FILE
        self.env = os.environ if env is None else env

    def values(self, server: str, names: Iterable[str]) -> dict[str, str]:
        """Return the values of `names` for `server`; raise naming every one that is missing."""
        known = {**load_file(self.path), **{k: v for k, v in self.env.items()}}
        wanted = list(names)
        missing = [n for n in wanted if n not in known]
        if missing:
            raise SecretsError(
                f"server {server!r} needs secret(s) {', '.join(missing)} that this VM "
                f"does not have: add them to {self.path} or the provider's environment"
            )
        return {n: known[n] for n in wanted}

    def masker(self, names: Iterable[str]) -> Masker:
        """Return a masker for the current values of `names`."""
        known = {**load_file(self.path), **dict(self.env)}
        return Masker(known[n] for n in names if n in known)


class Masker:
    """Replaces secret values in text with ****."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = sorted({v for v in values if len(v) >= MIN_MASKED_LENGTH}, key=len, reverse=True)

    def extended(self, values: Iterable[str]) -> Masker:
        """A masker that also hides `values`."""
        return Masker([*self.values, *values])

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
        return text
