"""pipeline/secrets.py: the server-secret store, grants, and what a deploy's masker hides."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pipeline.config.settings import Repo, SecretGrant, Settings, Webhook
from pipeline.errors import SecretsError
from pipeline.masking import MASK
from pipeline.secrets import MAX_SECRET_BYTES, SECRETS_FILE, SERVER_SECRETS_DIR, Secrets, SecretStore


def _settings(tmp_path: Path, *grants: SecretGrant) -> Settings:
    """A VM with repo `r` (its webhook secret in HOOK_SECRET, token in FETCH_TOKEN) granting `grants`."""
    hook = Webhook("github", "HOOK_SECRET", token_env="FETCH_TOKEN")
    return Settings(
        tmp_path / "deploy.yaml",
        tmp_path,
        repos=(Repo("r", webhook=hook, secrets=grants),),
        admin_token="admin-value-1",
        admin_token_env="ADMIN_TOKEN",
    )


def _store(tmp_path: Path) -> SecretStore:
    return SecretStore(tmp_path / SERVER_SECRETS_DIR)


def test_a_stored_secret_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    """`set` writes one file per secret, readable by the owner only, in a directory only the owner opens."""
    tmp_path.chmod(0o755)
    store = _store(tmp_path)
    store.set("API_KEY", "value-1")
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.path / "API_KEY").stat().st_mode) == 0o600
    assert store.get("API_KEY") == "value-1"
    store.set("API_KEY", "value-2")
    assert (store.names(), store.get("API_KEY")) == (["API_KEY"], "value-2")
    assert [p.name for p in store.path.iterdir()] == ["API_KEY"]  # no temp file left behind


def test_remove_says_whether_the_store_held_the_secret(tmp_path: Path) -> None:
    """`remove` deletes a stored secret and answers False for one it never held."""
    store = _store(tmp_path)
    store.set("A", "value-a")
    assert store.remove("A") is True
    assert store.remove("A") is False
    assert store.get("A") is None


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("1ABC", "not a secret name"),
        ("../etc", "not a secret name"),
        ("A-B", "not a secret name"),
        ("CENTRAL_MCP_ADMIN", "the provider's own variables"),
    ],
)
def test_a_bad_name_is_refused(tmp_path: Path, name: str, fragment: str) -> None:
    """Names are environment variable names, never a path, and never CENTRAL_MCP_*."""
    with pytest.raises(SecretsError, match=fragment):
        _store(tmp_path).set(name, "value")
    assert _store(tmp_path).get(name) is None


@pytest.mark.parametrize(
    "value, fragment",
    [("a\0b", "NUL byte"), ("x" * (MAX_SECRET_BYTES + 1), f"over {MAX_SECRET_BYTES} bytes")],
)
def test_a_value_an_environment_cannot_carry_is_refused(tmp_path: Path, value: str, fragment: str) -> None:
    """A NUL byte or an oversized value is refused, and the error never shows the value."""
    with pytest.raises(SecretsError, match=fragment) as caught:
        _store(tmp_path).set("A", value)
    assert value not in str(caught.value)


def test_a_granted_stored_secret_is_given(tmp_path: Path) -> None:
    """A repo-wide grant and a server grant both give their stored values to the server."""
    settings = _settings(tmp_path, SecretGrant("ALL_KEY"), SecretGrant("ONE_KEY", ("srv",)))
    _store(tmp_path).set("ALL_KEY", "all-value")
    _store(tmp_path).set("ONE_KEY", "one-value")
    given = Secrets(tmp_path, env={}).values(settings, "r", "srv", ["ALL_KEY", "ONE_KEY"])
    assert given == {"ALL_KEY": "all-value", "ONE_KEY": "one-value"}


@pytest.mark.parametrize(
    "name, server, fragment",
    [
        ("HOOK_SECRET", "srv", "HOOK_SECRET is one of the provider's own credentials"),
        ("FETCH_TOKEN", "srv", "FETCH_TOKEN is one of the provider's own credentials"),
        ("ADMIN_TOKEN", "srv", "ADMIN_TOKEN is one of the provider's own credentials"),
        ("CENTRAL_MCP_ANYTHING", "srv", "CENTRAL_MCP_ANYTHING is one of the provider's own credentials"),
        (
            "STORED_ONLY",
            "srv",
            r"STORED_ONLY is not granted to it in deploy.yaml: grant it .*repos\[0\].secrets",
        ),
        ("ONE_KEY", "other", "ONE_KEY is not granted to it in deploy.yaml"),
        (
            "GRANTED_ONLY",
            "srv",
            r"granted but not in the server-secret store: .*`central-mcp secret set GRANTED_ONLY`",
        ),
    ],
)
def test_a_secret_not_granted_or_not_stored_is_refused_naming_the_fix(
    tmp_path: Path, name: str, server: str, fragment: str
) -> None:
    """Provider credentials, ungranted and unstored names are refused with the server, name and fix."""
    settings = _settings(tmp_path, SecretGrant("ONE_KEY", ("srv",)), SecretGrant("GRANTED_ONLY"))
    for stored in ("STORED_ONLY", "ONE_KEY", "HOOK_SECRET", "ADMIN_TOKEN"):
        _store(tmp_path).set(stored, f"value-of-{stored}")
    env = {
        "HOOK_SECRET": "hook-value",
        "FETCH_TOKEN": "fetch-value",
        "CENTRAL_MCP_ANYTHING": "provider-value",
    }
    with pytest.raises(SecretsError, match=fragment) as caught:
        Secrets(tmp_path, env=env).values(settings, "r", server, [name])
    assert f"server {server!r}" in str(caught.value)
    assert not any(shown in str(caught.value) for shown in ("value-of-", *env.values()))


def test_the_environment_and_secrets_env_are_never_a_source(tmp_path: Path) -> None:
    """A granted name found only in the provider's environment or secrets.env is not given."""
    settings = _settings(tmp_path, SecretGrant("OLD_KEY"))
    (tmp_path / SECRETS_FILE).write_text("OLD_KEY=old-value\n")
    with pytest.raises(SecretsError) as caught:
        Secrets(tmp_path, env={"OLD_KEY": "env-value"}).values(settings, "r", "srv", ["OLD_KEY"])
    message = str(caught.value)
    assert "`central-mcp secret set OLD_KEY`" in message
    assert (
        f"it is in {tmp_path / SECRETS_FILE}, which now holds only the provider's own credentials" in message
    )
    assert "old-value" not in message and "env-value" not in message


def test_an_unknown_repo_grants_nothing(tmp_path: Path) -> None:
    """A release of a repo no longer in deploy.yaml gets no secret, and the error says so."""
    _store(tmp_path).set("A_KEY", "a-value")
    with pytest.raises(SecretsError, match="a repos entry named 'gone'"):
        Secrets(tmp_path, env={}).values(_settings(tmp_path), "gone", "srv", ["A_KEY"])
    assert Secrets(tmp_path, env={}).values(_settings(tmp_path), "gone", "srv", []) == {}


def test_the_masker_hides_server_secrets_and_provider_credentials(tmp_path: Path) -> None:
    """A deploy's masker hides every stored secret, secrets.env, the credentials deploy.yaml names and
    CENTRAL_MCP_* values, and leaves paths of CENTRAL_MCP_STATE_DIR readable."""
    _store(tmp_path).set("UNGRANTED_KEY", "stored-value")
    (tmp_path / SECRETS_FILE).write_text("WHATEVER=file-value\n")
    env = {
        "HOOK_SECRET": "hook-value",
        "FETCH_TOKEN": "fetch-value",
        "CENTRAL_MCP_OTHER": "provider-value",
        "CENTRAL_MCP_STATE_DIR": "/srv/state",
        "HOME": "/root",
    }
    masker = Secrets(tmp_path, env=env).masker(_settings(tmp_path))
    values = ["stored-value", "file-value", "hook-value", "fetch-value", "provider-value", "admin-value-1"]
    assert masker(" ".join(values)) == " ".join([MASK] * len(values))
    assert masker("/srv/state /root") == "/srv/state /root"


def test_the_old_file_is_mentioned_only_for_a_granted_name(tmp_path: Path) -> None:
    """An ungranted name's refusal says nothing of secrets.env: a pusher cannot probe what it holds."""
    (tmp_path / SECRETS_FILE).write_text("SOME_OTHER_KEY=other-value\n")
    with pytest.raises(SecretsError) as caught:
        Secrets(tmp_path, env={}).values(_settings(tmp_path), "r", "srv", ["SOME_OTHER_KEY"])
    assert SECRETS_FILE not in str(caught.value)


def test_an_ungranted_name_reads_the_same_whether_or_not_it_is_stored(tmp_path: Path) -> None:
    """The refusal of an ungranted name does not tell a pusher whether the store holds it."""
    _store(tmp_path).set("STORED_KEY", "stored-value")
    said = []
    for name in ("STORED_KEY", "ABSENT_KEY"):
        with pytest.raises(SecretsError) as caught:
            Secrets(tmp_path, env={}).values(_settings(tmp_path), "r", "srv", [name])
        said.append(str(caught.value).replace(name, "NAME"))
    assert said[0] == said[1]
