"""The one error tree of central-mcp.

    CentralMCPError                 every error the package raises on purpose
    ├── ConfigError                 deploy.yaml or a manifest is wrong (carries Problems)
    ├── SourceError                 git: a repo, ref or tree that cannot be read
    ├── DockerError                 the Docker engine refused or failed
    │   └── EngineUnavailable       no Docker engine answers
    ├── BuildError                  an image did not build (carries the build log tail)
    ├── GateError                   a candidate did not pass the MCP health gate
    └── DeployError                 a deploy could not go on (lock, plan, swap)

Lower libraries' errors (docker, git, yaml, httpx) are translated into these at their
adapter; only the CLI turns them into exit codes and only the HTTP layer into responses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one file: where, what, and the likely fix."""

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: str = ""

    def render(self) -> str:
        """Return the one-line `file:line:column path: message (fix)` form."""
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        text = f"{where} {self.path}: {self.message}"
        return f"{text} — {self.hint}" if self.hint else text

    def as_json(self) -> dict[str, object]:
        """Return the problem as a JSON-ready mapping."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


class CentralMCPError(Exception):
    """Base of every error central-mcp raises on purpose."""


class ConfigError(CentralMCPError):
    """deploy.yaml or a server manifest is invalid; `problems` lists every fault found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))


class SourceError(CentralMCPError):
    """A git repository, ref or tree could not be read."""


class DockerError(CentralMCPError):
    """The Docker engine refused or failed an operation."""


class EngineUnavailable(DockerError):
    """No Docker engine answers on this machine."""


class BuildError(CentralMCPError):
    """An image failed to build; the message carries the end of the build log."""


class GateError(CentralMCPError):
    """A candidate container failed the MCP health gate."""


class DeployError(CentralMCPError):
    """A deploy could not continue (lock held, bad plan, failed swap)."""
