"""Push webhooks from GitHub, Gitea/Forgejo and GitLab, deployed through the same engine.

Order of checks, each answering with a short reason and changing nothing:
size (413, before reading it all) → signature over the raw body against every repo of that
provider (401, before parsing) → body parsing (400) → event (ping 200, others 202) → repo
match (404) → ref, deletion, skip markers and path filters (202) → duplicate delivery (the
same deploy) → queue room (429) → 202 with the deploy id, while the fetch and the deploy
run in the repo's lane.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import git

from pipeline import partial, source
from pipeline.config.settings import Repo, Settings
from pipeline.context import DeployRequest
from pipeline.deploylog import DeployLog
from pipeline.errors import SourceError
from pipeline.states import DeploySource

PROVIDERS = {"github": ("github",), "gitea": ("gitea", "forgejo"), "gitlab": ("gitlab",)}
SKIP_MARKERS = re.compile(r"\[(skip deploy|skip ci|ci skip)\]", re.IGNORECASE)


@dataclass(frozen=True)
class Delivery:
    """What the HTTP layer read off a webhook request."""

    provider: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Answer:
    """The webhook's HTTP answer: status and a small JSON body, plus headers."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Push:
    """The fields of a push payload that a deploy needs."""

    repo_names: tuple[str, ...]
    clone_urls: tuple[str, ...]
    ref: str
    before: str
    after: str
    message: str
    author: str
    paths: tuple[str, ...] | None


def sign_github(secret: str, body: bytes) -> str:
    """Return GitHub's X-Hub-Signature-256 value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sign_gitea(secret: str, body: bytes) -> str:
    """Return Gitea's X-Gitea-Signature value (bare hex HMAC-SHA256) for `body`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Receiver:
    """Turns deliveries into deploys; `submit` and `waiting` come from the dispatcher."""

    def __init__(
        self,
        settings: Settings,
        submit: Callable[[DeployRequest, str], int],
        waiting: Callable[[], int],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.submit = submit
        self.waiting = waiting
        self.env = os.environ if env is None else env

    def handle(self, delivery: Delivery) -> Answer:
        """Check and act on one delivery."""
        repos = self._verified_repos(delivery)
        if not repos:
            return Answer(401, {"error": "missing or invalid signature"})
        try:
            payload = _parse(delivery)
        except ValueError as exc:
            return Answer(400, {"error": f"malformed body: {exc}"})
        event = _event(delivery)
        if event in ("ping", "system hook"):
            return Answer(200, {"ok": True, "event": "ping"})
        if event not in ("push", "push hook"):
            return Answer(202, {"ignored": f"event {event or 'unknown'}"})
        try:
            push = _push(payload, delivery.provider)
        except (KeyError, TypeError, ValueError) as exc:
            return Answer(400, {"error": f"push payload lacks a usable field: {exc}"})
        repo = _match(repos, push)
        if repo is None:
            return Answer(404, {"error": f"no configured repo matches {', '.join(push.repo_names)}"})
        reason = _skip_reason(repo, push)
        if reason:
            return Answer(202, {"ignored": reason})
        if self.waiting() >= self.settings.webhook_queue:
            return Answer(429, {"error": "deploy queue is full"}, {"Retry-After": "30"})
        delivery_id = _delivery_id(delivery)
        deploy_id = self.submit(self._request(repo, push), delivery_id)
        url = f"{self.settings.base_url}/deploys/{deploy_id}"
        return Answer(202, {"deploy": deploy_id, "url": url, "commit": push.after})

    def _verified_repos(self, delivery: Delivery) -> list[Repo]:
        kinds = PROVIDERS.get(delivery.provider, ())
        found = []
        for repo in self.settings.repos:
            hook = repo.webhook
            if hook is None or hook.provider not in kinds:
                continue
            secret = self.env.get(hook.secret_env, "")
            if secret and _signature_ok(delivery, secret):
                found.append(repo)
        return found

    def _request(self, repo: Repo, push: Push) -> DeployRequest:
        url = fetch_url(repo)

        def fetch(log: DeployLog) -> Path:
            live = partial.live_prints(self.settings)
            return fetch_tip(self.settings, repo, url, push.after, log, self.env, live)

        return DeployRequest(
            source=DeploySource.WEBHOOK,
            repo=repo.name,
            ref=f"refs/heads/{repo.branch}",
            commit=push.after,
            author=push.author,
            message=push.message,
            fetch=fetch,
        )


def fetch_url(repo: Repo) -> str:
    """Where the VM fetches a webhook repo from: deploy.yaml's clone_url, or GitHub's https URL of
    the repo's name. Never a URL from the delivery: a signed payload still carries values chosen
    elsewhere (`--upload-pack=<cmd>` ran a command; an http:// URL received the token)."""
    if repo.clone_url:
        return repo.clone_url
    return f"https://github.com/{repo.name}.git"


def fetch_tip(
    settings: Settings,
    repo: Repo,
    url: str,
    hint: str,
    log: DeployLog,
    env: Mapping[str, str],
    live: Mapping[str, str] | None = None,
) -> Path:
    """Fetch the configured branch from `url` into the repo's mirror and snapshot its tip.

    A delivery is a trigger, never the source of truth: its commit (`hint`) is only logged. The
    branch's tip is deployed, so a replayed old delivery redeploys what the branch already holds
    (a no-op), while force pushes and newer pushes that raced the delivery deploy what is there.
    With `live` (server -> live fingerprint) only what changed is unpacked (partial.py).
    """
    ref = f"refs/heads/{repo.branch}"
    mirror = mirror_path(settings, repo)
    git_env, config = _credentials(repo, env, url)
    log.masker = log.masker.extended(v for v in git_env.values() if v) if git_env else log.masker
    try:
        source.init_bare(mirror, repo.branch)
        log.line(f"fetching {repo.branch} from {_redact(url)}")
        source.fetch(mirror, url, f"+{ref}:{ref}", git_env, config, settings.proxy.deploy_timeout)
        tip = source.resolve(mirror, ref)
    except git.GitCommandError as exc:
        detail = log.masker(str(exc.stderr or "").strip().removeprefix("stderr: "))
        raise SourceError(f"cannot fetch {repo.branch} of {repo.name} from {_redact(url)}: {detail}") from exc
    if tip != hint:
        log.line(
            f"the delivery named {hint[:12]}, but {repo.branch} is at {tip[:12]}: deploying the "
            "branch's tip (a delivery only triggers a deploy)"
        )
    workdir = source.new_workdir(source.snapshots_dir(settings.state_dir))
    select = partial.selector(settings, repo, live) if live is not None else None
    source.take(
        mirror, repo.name, ref, tip, workdir, None, None, source.bounds(settings), repo.manifests, select
    )
    return workdir


def mirror_path(settings: Settings, repo: Repo) -> Path:
    """The local mirror of a webhook repo: <state>/mirrors/<owner>/<name>.git."""
    return settings.state_dir / "mirrors" / f"{repo.name}.git"


def _credentials(repo: Repo, env: Mapping[str, str], url: str) -> tuple[dict[str, str], list[str]]:
    """Return the git environment and `-c` options that carry the VM's credentials: a token only
    over https and only for the fetch URL's own host (a redirect elsewhere gets none)."""
    hook = repo.webhook
    if hook is None:
        return {}, []
    if hook.ssh_key:
        return {
            "GIT_SSH_COMMAND": f"ssh -i {hook.ssh_key} -o IdentitiesOnly=yes "
            "-o StrictHostKeyChecking=accept-new"
        }, []
    token = env.get(hook.token_env, "") if hook.token_env else ""
    parts = urlsplit(url)
    if token and parts.scheme == "https" and parts.hostname:
        scope = f"https://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return {"CENTRAL_MCP_FETCH_TOKEN": token}, [
            "-c",
            "credential.helper=",
            "-c",
            f"credential.{scope}.helper=!f() {{ echo username=x-access-token; "
            "echo password=$CENTRAL_MCP_FETCH_TOKEN; }; f",
        ]
    return {}, []


def _redact(url: str) -> str:
    return re.sub(r"//[^/@]+@", "//***@", url)


def _signature_ok(delivery: Delivery, secret: str) -> bool:
    h = delivery.headers
    if delivery.provider == "github":
        given = h.get("x-hub-signature-256", "")
        return given.startswith("sha256=") and _same(given, sign_github(secret, delivery.body))
    if delivery.provider == "gitea":
        given = h.get("x-gitea-signature") or h.get("x-forgejo-signature") or ""
        return bool(given) and _same(given.lower(), sign_gitea(secret, delivery.body))
    given = h.get("x-gitlab-token", "")
    return bool(given) and _same(given, secret)


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of a header with what it should be, as bytes: a header may hold any
    byte (compare_digest refuses non-ASCII text with a TypeError, which was a 500)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def _parse(delivery: Delivery) -> dict[str, Any]:
    content_type = delivery.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        text = delivery.body.decode("utf-8")
        if content_type == "application/x-www-form-urlencoded":
            fields = parse_qs(text, strict_parsing=True)
            if "payload" not in fields:
                raise ValueError("form body has no payload field")
            text = fields["payload"][0]
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ValueError("body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(data, dict):
        raise ValueError("the payload is not a JSON object")
    return data


def _event(delivery: Delivery) -> str:
    h = delivery.headers
    raw = (
        h.get("x-github-event")
        or h.get("x-gitea-event")
        or h.get("x-forgejo-event")
        or h.get("x-gitlab-event")
        or ""
    )
    return raw.strip().lower()


def _delivery_id(delivery: Delivery) -> str:
    h = delivery.headers
    found = (
        h.get("x-github-delivery")
        or h.get("x-gitea-delivery")
        or h.get("x-forgejo-delivery")
        or h.get("x-gitlab-event-uuid")
        or h.get("x-gitlab-webhook-uuid")
        or ""
    )
    return f"{delivery.provider}:{found}" if found else ""


def _push(payload: dict[str, Any], provider: str) -> Push:
    ref, before, after = str(payload["ref"]), str(payload.get("before", "")), str(payload["after"])
    if not re.fullmatch(r"[0-9a-f]{40}", after):
        raise ValueError(f"'after' is not a commit sha: {after[:60]!r}")
    repo = payload.get("project") if provider == "gitlab" else payload.get("repository")
    repo = repo if isinstance(repo, dict) else {}
    names = [repo.get(k) for k in ("full_name", "path_with_namespace", "name")]
    urls = [repo.get(k) for k in ("clone_url", "git_http_url", "ssh_url", "git_ssh_url", "url")]
    head = payload.get("head_commit") or {}
    commits = payload.get("commits")
    if provider == "gitlab" and isinstance(commits, list) and commits:
        head = commits[-1]
    author = head.get("author") if isinstance(head, dict) else None
    return Push(
        repo_names=tuple(str(n) for n in names if n),
        clone_urls=tuple(str(u) for u in urls if u),
        ref=ref,
        before=before,
        after=after,
        message=str(head.get("message", "")) if isinstance(head, dict) else "",
        author=str(author.get("name", "")) if isinstance(author, dict) else "",
        paths=_changed_paths(commits),
    )


def _changed_paths(commits: object) -> tuple[str, ...] | None:
    if not isinstance(commits, list) or not commits:
        return None
    paths: set[str] = set()
    for commit in commits:
        if isinstance(commit, dict):
            for key in ("added", "modified", "removed"):
                paths.update(str(p) for p in commit.get(key) or [])
    return tuple(sorted(paths))


def _match(repos: list[Repo], push: Push) -> Repo | None:
    """The repo a push is for; names compare without case, as GitHub and GitLab treat them."""
    pushed = [n.lower() for n in push.repo_names]
    for repo in repos:
        name = repo.name.lower()
        names = {name, name.split("/")[-1]}
        if any(n in names or n.split("/")[-1] == name for n in pushed):
            return repo
        if repo.clone_url and repo.clone_url in push.clone_urls:
            return repo
    return None


def _skip_reason(repo: Repo, push: Push) -> str:
    if push.ref.startswith("refs/tags/"):
        return f"tag {push.ref.removeprefix('refs/tags/')}: tags do not deploy"
    branch = push.ref.removeprefix("refs/heads/")
    if push.after == source.ZERO_SHA:
        return f"branch {branch} was deleted: nothing to deploy"
    if branch != repo.branch:
        return f"branch {branch}: only {repo.branch} deploys"
    if SKIP_MARKERS.search(push.message):
        return "the head commit asks to skip the deploy"
    watched = repo.webhook.paths if repo.webhook else ()
    if (
        watched
        and push.paths is not None
        and not any(fnmatch.fnmatch(path, pattern) for path in push.paths for pattern in watched)
    ):
        return "no watched path changed"
    return ""


def sample_curl(settings: Settings, repo: Repo, commit: str, env: Mapping[str, str]) -> str:
    """A curl command line carrying a correctly signed sample push for `repo`."""
    import shlex
    import uuid

    hook = repo.webhook
    if hook is None:
        raise SourceError(f"repo {repo.name!r} has no webhook section in deploy.yaml")
    secret = env.get(hook.secret_env, "")
    if not secret:
        raise SourceError(f"the webhook secret env var {hook.secret_env} is not set in this shell")
    provider = "gitea" if hook.provider in ("gitea", "forgejo") else hook.provider
    key = "project" if provider == "gitlab" else "repository"
    payload = {
        "ref": f"refs/heads/{repo.branch}",
        "before": source.ZERO_SHA,
        "after": commit,
        key: {
            "full_name": repo.name,
            "path_with_namespace": repo.name,
            "name": repo.name,
            "clone_url": repo.clone_url,
        },
        "head_commit": {"message": "central-mcp webhook-test", "author": {"name": "webhook-test"}},
    }
    body = json.dumps(payload, separators=(",", ":"))
    headers = {"Content-Type": "application/json"}
    delivery = str(uuid.uuid4())
    if provider == "github":
        headers |= {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign_github(secret, body.encode()),
        }
    elif provider == "gitea":
        headers |= {
            "X-Gitea-Event": "push",
            "X-Gitea-Delivery": delivery,
            "X-Gitea-Signature": sign_gitea(secret, body.encode()),
        }
    else:
        headers |= {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "$" + hook.secret_env}
    parts = ["curl", "-sS", "-X", "POST", f"{settings.base_url}/hooks/{provider}"]
    for name, value in headers.items():
        parts += ["-H", f"{name}: {value}"]
    line = " ".join(shlex.quote(p) for p in parts) + " --data-binary " + shlex.quote(body)
    return line.replace(
        shlex.quote(f"X-Gitlab-Token: ${hook.secret_env}"), f'"X-Gitlab-Token: ${hook.secret_env}"'
    )
