"""Server secrets: a store of their own on the VM, given to servers only as deploy.yaml grants.

Two kinds of secret live on a VM and never meet:

- the provider's own credentials (webhook secrets, fetch tokens, the admin token, `CENTRAL_MCP_*`):
  the serve process's environment and `<state>/secrets.env`. No server ever receives one.
- server secrets: `<state>/server-secrets/`, one 0600 file per secret in a 0700 directory, managed
  with `central-mcp secret set|list|rm`. A manifest's `run.secrets` may name one only when the store
  holds it and deploy.yaml's `repos[].secrets` grants it to the server's repo or to the server.

Every piece of output a deploy produces passes through a Masker (pipeline/masking.py) built from the
values of both kinds, so that no value, nor a common encoding of it, appears in a log line, a page
or an error message.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from pipeline.config.settings import PROVIDER_ENV_PREFIX, STATE_DIR_ENV, Repo, Settings
from pipeline.errors import ConfigError, SecretsError
from pipeline.masking import MASK, Masker

__all__ = ["MASK", "Masker", "SecretStore", "Secrets", "load_file"]

SECRETS_FILE = "secrets.env"  # the provider's own credentials (loaded by the systemd unit)
SERVER_SECRETS_DIR = "server-secrets"
MAX_SECRET_BYTES = 64 * 1024  # one environment string; Linux caps each at 128 KiB
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Provider variables whose values are paths and names, not credentials (kept readable in output).
NOT_CREDENTIALS = frozenset({STATE_DIR_ENV, "CENTRAL_MCP_CONFIG", "CENTRAL_MCP_PYTHON", "CENTRAL_MCP_REPO"})


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


def check_name(name: str) -> str:
    """Return `name` if it may name a server secret; raise SecretsError saying why not."""
    if not NAME_PATTERN.fullmatch(name):
        raise SecretsError(
            f"{name!r} is not a secret name: use letters, digits and '_', not starting with a digit "
            "(an environment variable name, at most 128 characters)"
        )
    if name.startswith(PROVIDER_ENV_PREFIX):
        raise SecretsError(
            f"{name!r} starts with {PROVIDER_ENV_PREFIX}, which names the provider's own variables; "
            "choose another name"
        )
    return name


class SecretStore:
    """The server-secret store: one file per secret, named as the secret, 0600 in a 0700 directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def names(self) -> list[str]:
        """The names of every stored secret, sorted."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if NAME_PATTERN.fullmatch(p.name) and p.is_file())

    def get(self, name: str) -> str | None:
        """The value of `name`, or None when the store does not hold it."""
        if not NAME_PATTERN.fullmatch(name):
            return None
        file = self.path / name
        try:
            with file.open("rb") as f:
                data = f.read(MAX_SECRET_BYTES + 1)
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as exc:
            raise SecretsError(f"cannot read {file} ({exc.strerror}); check its owner and mode") from exc
        return _decode(data, f"{file}")

    def values(self) -> dict[str, str]:
        """Every stored secret by name."""
        found = {name: self.get(name) for name in self.names()}
        return {name: value for name, value in found.items() if value is not None}

    def set(self, name: str, value: str) -> None:
        """Store `value` under `name` (replacing it atomically), 0600 in a 0700 directory."""
        check_name(name)
        data = _decode(value.encode("utf-8"), f"the value of {name}").encode("utf-8")
        self._ensure_dir()
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-")  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self, name: str) -> bool:
        """Remove `name`; return whether the store held it."""
        if not NAME_PATTERN.fullmatch(name):
            return False
        try:
            (self.path / name).unlink()
        except FileNotFoundError:
            return False
        return True

    def _ensure_dir(self) -> None:
        try:
            for folder in (
                self.path.parent,
                self.path,
            ):  # the state dir is the owner's only, as serve makes it
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                folder.chmod(0o700)
        except OSError as exc:
            raise SecretsError(
                f"cannot create {self.path} ({exc.strerror}); check its parent's owner"
            ) from exc


class Secrets:
    """Gives servers the secrets deploy.yaml grants them, and masks every secret in output."""

    def __init__(self, state_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.store = SecretStore(state_dir / SERVER_SECRETS_DIR)
        self.provider_file = state_dir / SECRETS_FILE
        self.env = os.environ if env is None else env

    def values(self, settings: Settings, repo: str, server: str, names: Iterable[str]) -> dict[str, str]:
        """The values of `names` for `server` of `repo`; raise SecretsError naming every name that is
        a provider credential, not granted, or not stored, and how to fix each."""
        wanted = list(names)
        found = {name: self.store.get(name) for name in wanted}
        reasons = [
            _refusal(settings, repo, server, name, found[name] is not None, self._in_old_file)
            for name in wanted
        ]
        refused = [r for r in reasons if r]
        if refused:
            raise SecretsError(f"server {server!r}: " + "; ".join(refused))
        return {name: value for name, value in found.items() if value is not None}

    def masker(self, settings: Settings) -> Masker:
        """A masker for every server secret in the store and every provider credential."""
        env = self.env
        credentials = [env.get(name, "") for name in settings.credential_names()]
        provider = [
            v for k, v in env.items() if k.startswith(PROVIDER_ENV_PREFIX) and k not in NOT_CREDENTIALS
        ]
        old = list(load_file(self.provider_file).values())
        return Masker([*self.store.values().values(), settings.admin_token, *credentials, *provider, *old])

    def _in_old_file(self, name: str) -> bool:
        try:
            return name in load_file(self.provider_file)
        except SecretsError:
            return False


def _refusal(
    settings: Settings, repo: str, server: str, name: str, stored: bool, in_old_file: Callable[[str], bool]
) -> str:
    """Why `server` may not have secret `name` ('' when it may), with the fix."""
    if name in settings.credential_names() or name.startswith(PROVIDER_ENV_PREFIX):
        return (
            f"{name} is one of the provider's own credentials (a webhook secret or token, the admin "
            f"token, {PROVIDER_ENV_PREFIX}*), which no server ever receives: give the server a secret "
            "of its own under another name (`central-mcp secret set NAME`, granted in deploy.yaml's "
            "repos[].secrets) and name that in run.secrets"
        )
    found = _repo(settings, repo)
    if found is None or name not in found[1].granted(server):
        # The same words whether or not the store holds it: a pusher learns nothing of the store.
        where = f"repos[{found[0]}].secrets" if found else f"the secrets of a repos entry named {repo!r}"
        return (
            f"secret {name} is not granted to it in deploy.yaml: grant it in {settings.config_path} "
            f"under {where}, as `- {name}` (every server of the repo) or `- {{name: {name}, servers: "
            f"[{server}]}}`, and store its value with `central-mcp secret set {name}` if it is not stored"
        )
    if stored:
        return ""
    moved = (
        f" (it is in {settings.state_dir / SECRETS_FILE}, which now holds only the provider's own "
        "credentials: move it into the server-secret store, then delete that line)"
        if in_old_file(name)
        else ""
    )
    return (
        f"secret {name} is granted but not in the server-secret store: store its value on the VM "
        f"with `central-mcp secret set {name}` (read from stdin){moved}"
    )


def _repo(settings: Settings, name: str) -> tuple[int, Repo] | None:
    try:
        repo = settings.repo(name)
    except ConfigError:
        return None
    return settings.repos.index(repo), repo


def _decode(data: bytes, what: str) -> str:
    if len(data) > MAX_SECRET_BYTES:
        raise SecretsError(
            f"{what} is over {MAX_SECRET_BYTES} bytes, more than an environment variable holds"
        )
    if b"\0" in data:
        raise SecretsError(f"{what} holds a NUL byte, which an environment variable cannot carry")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretsError(f"{what} is not UTF-8 text (at byte {exc.start})") from exc
