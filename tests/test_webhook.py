"""Webhook receiver logic against real public payloads (tests/fixtures/public), signed over their bytes."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from pipeline import webhook
from pipeline.config.settings import Repo, Settings, Webhook
from pipeline.context import DeployRequest
from pipeline.deploylog import DeployLog
from pipeline.webhook import Delivery, Receiver, sample_curl, sign_gitea, sign_github

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "public"
SECRET = "It's a Secret to Everybody"


def fixture(name: str) -> bytes:
    """The fixture's exact bytes."""
    return (FIXTURES / name).read_bytes()


def settings_for(*repos: Repo, queue: int = 16) -> Settings:
    """Settings with just these repos."""
    return Settings(
        config_path=Path("deploy.yaml"), state_dir=Path("/nonexistent"), repos=repos, webhook_queue=queue
    )


GITHUB = Repo(name="Codertocat/Hello-World", branch="master", webhook=Webhook("github", "GH_SECRET"))
GITEA = Repo(name="example/example", branch="master", webhook=Webhook("gitea", "GT_SECRET"))
GITLAB = Repo(name="mike/diaspora", branch="master", webhook=Webhook("gitlab", "GL_SECRET"))
ENV = {"GH_SECRET": SECRET, "GT_SECRET": SECRET, "GL_SECRET": SECRET}


class Recorder:
    """Stands in for the dispatcher: records submitted requests, numbers them, dedupes deliveries."""

    def __init__(self) -> None:
        self.requests: list[DeployRequest] = []
        self.deliveries: dict[str, int] = {}

    def submit(self, request: DeployRequest, delivery_id: str) -> int:
        if delivery_id in self.deliveries:
            return self.deliveries[delivery_id]
        self.requests.append(request)
        self.deliveries[delivery_id] = len(self.requests)
        return len(self.requests)


def receiver(*repos: Repo, waiting: int = 0, queue: int = 16) -> tuple[Receiver, Recorder]:
    """A receiver over `repos` with a recording dispatcher."""
    recorder = Recorder()
    return Receiver(settings_for(*repos, queue=queue), recorder.submit, lambda: waiting, ENV), recorder


def github(body: bytes, event: str = "push", delivery: str = "d-1", **extra: str) -> Delivery:
    """A GitHub delivery of `body`, correctly signed unless overridden."""
    headers = {
        "x-github-event": event,
        "x-github-delivery": delivery,
        "content-type": "application/json",
        "x-hub-signature-256": sign_github(SECRET, body),
    }
    headers.update(extra)
    return Delivery("github", headers, body)


def test_githubs_documented_test_vector_signs_correctly() -> None:
    """GitHub's published HMAC example (secret, 'Hello, World!') gives the documented signature."""
    assert sign_github(SECRET, b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_signed_github_push_to_the_deploy_branch_queues_a_deploy_of_after() -> None:
    """A real signed push payload is accepted with 202, naming the deploy, for its `after` commit."""
    rx, rec = receiver(GITHUB)
    answer = rx.handle(github(fixture("github-push-branch.json")))
    payload = json.loads(fixture("github-push-branch.json"))
    assert answer.status == 202
    assert answer.body["deploy"] == 1 and answer.body["url"].endswith("/deploys/1")
    request = rec.requests[0]
    assert (request.source, request.ref, request.commit) == ("webhook", "refs/heads/master", payload["after"])
    assert request.fetch is not None and request.message == payload["head_commit"]["message"]


def test_form_encoded_github_delivery_is_accepted() -> None:
    """GitHub's application/x-www-form-urlencoded form (JSON in `payload`) deploys like JSON."""
    body = b"payload=" + quote(fixture("github-push-branch.json").decode()).encode()
    rx, rec = receiver(GITHUB)
    answer = rx.handle(github(body, **{"content-type": "application/x-www-form-urlencoded"}))
    assert answer.status == 202 and len(rec.requests) == 1


@pytest.mark.parametrize("name", ["github-ping.json", "github-ping-org-webhook.json"])
def test_ping_answers_200_even_without_a_repository(name: str) -> None:
    """Pings (including an organization ping with no repository) answer 200 and deploy nothing."""
    rx, rec = receiver(GITHUB)
    answer = rx.handle(github(fixture(name), event="ping"))
    assert answer.status == 200 and not rec.requests


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("github-push-tag-create.json", "tag"),
        ("github-push-tag-delete.json", "tag"),
        ("github-push-branch-delete.json", "deleted"),
    ],
)
def test_tags_and_deletions_are_ignored_with_a_reason(name: str, reason: str) -> None:
    """Tag pushes and branch deletions answer 202 with the reason and deploy nothing."""
    payload = json.loads(fixture(name))
    repo = Repo(
        name=payload["repository"]["full_name"], branch="master", webhook=Webhook("github", "GH_SECRET")
    )
    rx, rec = receiver(repo)
    answer = rx.handle(github(fixture(name)))
    assert answer.status == 202 and reason in answer.body["ignored"] and not rec.requests


def test_push_to_another_branch_is_ignored() -> None:
    """A push to a branch that is not the deploy branch answers 202 and deploys nothing."""
    repo = Repo(name="Codertocat/Hello-World", branch="main", webhook=Webhook("github", "GH_SECRET"))
    rx, rec = receiver(repo)
    answer = rx.handle(github(fixture("github-push-branch.json")))
    assert answer.status == 202 and "only main deploys" in answer.body["ignored"] and not rec.requests


def test_force_push_deploys() -> None:
    """A force push (argo-cd's real payload) deploys like any other push."""
    payload = json.loads(fixture("github-push-force.json"))
    repo = Repo(
        name=payload["repository"]["full_name"],
        branch=payload["ref"].removeprefix("refs/heads/"),
        webhook=Webhook("github", "GH_SECRET"),
    )
    rx, rec = receiver(repo)
    answer = rx.handle(github(fixture("github-push-force.json")))
    assert answer.status == 202 and rec.requests[0].commit == payload["after"]


def test_legacy_payload_without_sender_or_full_name_is_handled() -> None:
    """A 2012-era payload (no sender, no full_name) is matched by repository name, never a 500."""
    payload = json.loads(fixture("github-push-legacy-3-commits.json"))
    repo = Repo(
        name=payload["repository"]["name"],
        branch=payload["ref"].removeprefix("refs/heads/"),
        webhook=Webhook("github", "GH_SECRET"),
    )
    rx, _ = receiver(repo)
    answer = rx.handle(github(fixture("github-push-legacy-3-commits.json")))
    assert answer.status == 202, answer.body


def test_skip_marker_in_the_head_commit_skips() -> None:
    """`[skip deploy]` in the head commit message answers 202 and deploys nothing."""
    payload = json.loads(fixture("github-push-branch.json"))
    payload["head_commit"]["message"] = "docs only [skip deploy]"
    rx, rec = receiver(GITHUB)
    answer = rx.handle(github(json.dumps(payload).encode()))
    assert answer.status == 202 and "skip" in answer.body["ignored"] and not rec.requests


def test_path_filter_skips_pushes_that_touch_no_watched_path() -> None:
    """With watched paths configured, a push touching none of them does not deploy; one that does, does."""
    repo = Repo(
        name="Codertocat/Hello-World",
        branch="master",
        webhook=Webhook("github", "GH_SECRET", paths=("servers/*",)),
    )
    payload = json.loads(fixture("github-push-branch.json"))
    rx, rec = receiver(repo)
    assert rx.handle(github(json.dumps(payload).encode())).status == 202 and not rec.requests
    payload["commits"][0]["modified"] = ["servers/x/server.py"]
    assert rx.handle(github(json.dumps(payload).encode(), delivery="d-2")).body["deploy"] == 1


def test_same_delivery_twice_is_one_deploy() -> None:
    """A redelivery with the same X-GitHub-Delivery returns the same deploy and queues nothing new."""
    rx, rec = receiver(GITHUB)
    first = rx.handle(github(fixture("github-push-branch.json"), delivery="same"))
    second = rx.handle(github(fixture("github-push-branch.json"), delivery="same"))
    assert first.body["deploy"] == second.body["deploy"] and len(rec.requests) == 1


def test_full_queue_answers_429_with_retry_after() -> None:
    """When the deploy queue is full the webhook answers 429 with Retry-After and queues nothing."""
    rx, rec = receiver(GITHUB, waiting=16, queue=16)
    answer = rx.handle(github(fixture("github-push-branch.json")))
    assert answer.status == 429 and answer.headers and "Retry-After" in answer.headers and not rec.requests


def test_other_events_are_ignored_by_name() -> None:
    """An event other than push or ping answers 202 'ignored: event X'."""
    rx, _ = receiver(GITHUB)
    answer = rx.handle(github(b'{"action": "opened"}', event="issues"))
    assert answer == type(answer)(202, {"ignored": "event issues"})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-hub-signature-256": "sha256=" + "0" * 64},
        {"x-hub-signature-256": sign_github(SECRET, b"Hello, World!").replace("sha256=", "sha1=")},
        {"x-hub-signature-256": sign_github("another secret", b"x")},
    ],
)
def test_missing_wrong_or_wrong_scheme_signature_is_401(headers: dict[str, str]) -> None:
    """No, wrong, or wrong-scheme signatures answer 401 without echoing the secret, and deploy nothing."""
    body = fixture("github-push-branch.json")
    delivery = Delivery("github", {"x-github-event": "push", **headers}, body)
    rx, rec = receiver(GITHUB)
    answer = rx.handle(delivery)
    assert answer.status == 401 and not rec.requests
    assert SECRET not in json.dumps(answer.body)


@pytest.mark.parametrize(
    ("provider", "header"),
    [("github", "x-hub-signature-256"), ("gitea", "x-gitea-signature"), ("gitlab", "x-gitlab-token")],
)
def test_a_signature_header_with_non_ascii_bytes_is_401_not_500(provider: str, header: str) -> None:
    """A header byte outside ASCII (decoded as latin-1) is a wrong signature, never an exception."""
    repo = {"github": GITHUB, "gitea": GITEA, "gitlab": GITLAB}[provider]
    rx, rec = receiver(repo)
    delivery = Delivery(provider, {f"x-{provider}-event": "push", header: "sha256=" + "\xe9" * 64}, b"{}")
    assert rx.handle(delivery).status == 401 and not rec.requests


def test_signature_is_checked_before_the_body_is_parsed() -> None:
    """A malformed body with a bad signature is a 401 (never reaching the parser's 400)."""
    rx, _ = receiver(GITHUB)
    assert rx.handle(Delivery("github", {"x-github-event": "push"}, b"{not json")).status == 401


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b"payload"])
def test_malformed_signed_bodies_are_400(body: bytes) -> None:
    """Correctly signed garbage (bad JSON, non-object, non-UTF-8) answers 400 with a reason."""
    rx, rec = receiver(GITHUB)
    content_type = "application/x-www-form-urlencoded" if body == b"payload" else "application/json"
    answer = rx.handle(github(body, **{"content-type": content_type}))
    assert answer.status == 400 and "malformed" in answer.body["error"] and not rec.requests


@pytest.mark.parametrize(
    "payload",
    [
        {"repository": {"full_name": "Codertocat/Hello-World"}},
        {"ref": "refs/heads/master", "repository": {"full_name": "Codertocat/Hello-World"}},
        {"ref": "refs/heads/master", "after": "not-a-sha", "repository": {}},
    ],
)
def test_push_missing_fields_is_400_never_500(payload: dict[str, object]) -> None:
    """A signed push that lacks ref or a valid after answers 400 naming the field."""
    rx, _ = receiver(GITHUB)
    answer = rx.handle(github(json.dumps(payload).encode()))
    assert answer.status == 400 and "field" in answer.body["error"]


def test_unknown_repo_is_404_after_the_signature_check() -> None:
    """A correctly signed push for a repo that is not configured answers 404."""
    payload = json.loads(fixture("github-push-branch.json"))
    payload["repository"]["full_name"] = payload["repository"]["name"] = "someone/else"
    rx, rec = receiver(GITHUB)
    answer = rx.handle(github(json.dumps(payload).encode()))
    assert answer.status == 404 and not rec.requests


def test_gitea_push_with_bare_hex_signature_deploys() -> None:
    """Gitea's push (bare hex HMAC in X-Gitea-Signature) deploys; Forgejo's header works too."""
    body = fixture("gitea-push.json")
    for header in ("x-gitea-signature", "x-forgejo-signature"):
        rx, rec = receiver(GITEA)
        delivery = Delivery("gitea", {"x-gitea-event": "push", header: sign_gitea(SECRET, body)}, body)
        assert rx.handle(delivery).status == 202 and len(rec.requests) == 1


def test_gitlab_push_with_token_deploys_and_wrong_token_is_401() -> None:
    """GitLab's Push Hook with the right X-Gitlab-Token deploys; a wrong token is 401."""
    body = fixture("gitlab-push.json")
    rx, rec = receiver(GITLAB)
    ok = rx.handle(Delivery("gitlab", {"x-gitlab-event": "Push Hook", "x-gitlab-token": SECRET}, body))
    bad = rx.handle(Delivery("gitlab", {"x-gitlab-event": "Push Hook", "x-gitlab-token": "nope"}, body))
    assert ok.status == 202 and rec.requests[0].commit == json.loads(body)["after"]
    assert bad.status == 401


def test_gitlab_tag_push_is_ignored() -> None:
    """A GitLab tag push answers 202 and deploys nothing."""
    body = fixture("gitlab-tag-push.json")
    payload = json.loads(body)
    repo = Repo(
        name=payload["project"]["path_with_namespace"],
        branch="master",
        webhook=Webhook("gitlab", "GL_SECRET"),
    )
    rx, rec = receiver(repo)
    answer = rx.handle(
        Delivery("gitlab", {"x-gitlab-event": "Tag Push Hook", "x-gitlab-token": SECRET}, body)
    )
    assert answer.status == 202 and not rec.requests


def test_sample_curl_carries_a_valid_signature() -> None:
    """webhook-test's curl line signs exactly the body it sends."""
    repo = Repo(name="central-mcp", webhook=Webhook("github", "GH_SECRET"), clone_url="/srv/x.git")
    line = sample_curl(settings_for(repo), repo, "a" * 40, ENV)
    body = line.split("--data-binary ", 1)[1].strip("'")
    assert sign_github(SECRET, body.encode()) in line
    assert SECRET not in line


def test_the_fetch_url_never_comes_from_the_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signed push whose payload names `--upload-pack=...` as its clone URL is fetched from
    GitHub's https URL of the configured repo, never from the payload."""
    body = json.loads(fixture("github-push-branch.json"))
    body["repository"]["clone_url"] = "--upload-pack=touch /tmp/pwned"
    body["repository"]["html_url"] = "http://attacker.example/x.git"
    raw = json.dumps(body).encode()
    fetched: list[str] = []

    def fetch_tip(settings: object, repo: object, url: str, *rest: object) -> Path:
        fetched.append(url)
        return Path("/nowhere")

    monkeypatch.setattr(webhook, "fetch_tip", fetch_tip)
    rx, rec = receiver(GITHUB)
    answer = rx.handle(
        Delivery("github", {"x-github-event": "push", "x-hub-signature-256": sign_github(SECRET, raw)}, raw)
    )
    assert answer.status == 202
    [request] = rec.requests
    assert request.fetch is not None
    request.fetch(DeployLog.__new__(DeployLog))
    assert fetched == ["https://github.com/Codertocat/Hello-World.git"]


def test_the_fetch_token_is_scoped_to_the_https_host_and_never_sent_in_clear() -> None:
    """The credential helper answers only for the clone URL's own host, and only over https."""
    repo = Repo(name="o/r", webhook=Webhook("github", "S", token_env="TOKEN"))
    env = {"TOKEN": "ghp_secret"}
    git_env, options = webhook._credentials(repo, env, "https://github.com/o/r.git")
    assert git_env == {"CENTRAL_MCP_FETCH_TOKEN": "ghp_secret"}
    assert options[3].startswith("credential.https://github.com.helper=!f()")
    assert "ghp_secret" not in " ".join(options)
    assert webhook._credentials(repo, env, "http://github.com/o/r.git") == ({}, [])
    assert webhook._credentials(repo, env, "/srv/mirror.git") == ({}, [])


def _git(cwd: Path, *args: str) -> str:
    """Run git in `cwd` with a fixed identity; return its stdout."""
    import subprocess

    ident = ["-c", "user.name=T", "-c", "user.email=t@example.test"]
    done = subprocess.run(["git", *ident, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _commit(work: Path, text: str) -> str:
    """Commit `text` as README in the clone `work`; return the commit."""
    (work / "README").write_text(text)
    _git(work, "add", "README")
    _git(work, "commit", "--quiet", "-m", text)
    return _git(work, "rev-parse", "HEAD")


def test_a_delivery_deploys_the_branch_tip_even_after_a_force_push(tmp_path: Path) -> None:
    """fetch_tip snapshots what the configured branch holds now, whatever commit the delivery named."""
    from pipeline.source import Snapshot
    from pipeline.store import Store

    upstream = tmp_path / "github.git"
    work = tmp_path / "work"
    upstream.mkdir()
    _git(upstream, "init", "--quiet", "--bare", "--initial-branch=main")
    _git(tmp_path, "clone", "--quiet", str(upstream), str(work))
    c1, c2 = _commit(work, "c1"), _commit(work, "c2")
    _git(work, "push", "--quiet", "origin", "HEAD:main")
    repo = Repo(name="owner/repo", branch="main", clone_url=str(upstream), webhook=Webhook("github", "S"))
    settings = Settings(config_path=tmp_path / "deploy.yaml", state_dir=tmp_path / "state", repos=(repo,))
    log = DeployLog(Store(tmp_path / "state" / "db.sqlite"), 1)

    assert Snapshot.load(webhook.fetch_tip(settings, repo, str(upstream), c1, log, {})).commit == c2
    _git(work, "reset", "--quiet", "--hard", c1)
    c3 = _commit(work, "c3")
    _git(work, "push", "--quiet", "--force", "origin", "HEAD:main")
    assert Snapshot.load(webhook.fetch_tip(settings, repo, str(upstream), c2, log, {})).commit == c3
    assert webhook.mirror_path(settings, repo) == tmp_path / "state" / "mirrors" / "owner" / "repo.git"


def test_a_repo_named_with_its_owner_in_another_case_matches() -> None:
    """deploy.yaml's `owner/PROJECTS_all` matches a payload's `Owner/projects_all`: GitHub ignores case."""
    body = json.loads(fixture("github-push-branch.json"))
    body["repository"].update(full_name="Owner/projects_all", name="projects_all")
    raw = json.dumps(body).encode()
    repo = Repo(name="owner/PROJECTS_all", branch="master", webhook=Webhook("github", "GH_SECRET"))
    rx, rec = receiver(repo)
    assert rx.handle(github(raw)).status == 202 and rec.requests[0].repo == "owner/PROJECTS_all"


def test_a_fetch_that_never_ends_fails_by_the_deploy_timeout(tmp_path: Path) -> None:
    """A git server that accepts the fetch and then sends nothing held the repo's deploy lane, and every
    later delivery behind it, for good: proxy.deploy_timeout bounds the whole runbook, the fetch too."""
    import socket
    import threading
    import time

    from pipeline.config.settings import ProxyTimeouts
    from pipeline.errors import SourceError
    from pipeline.store import Store

    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                held.append(listener.accept()[0])  # read nothing, answer nothing
        except OSError:
            return

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/owner/repo.git"
    repo = Repo(name="owner/repo", branch="main", clone_url=url, webhook=Webhook("github", "S"))
    settings = Settings(
        config_path=tmp_path / "deploy.yaml",
        state_dir=tmp_path / "state",
        repos=(repo,),
        proxy=ProxyTimeouts(deploy_timeout=2.0),
    )
    log = DeployLog(Store(tmp_path / "state" / "db.sqlite"), 1)
    outcome: list[BaseException | None] = []

    def fetch() -> None:
        try:
            webhook.fetch_tip(settings, repo, url, "0" * 40, log, {})
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(15)
    took = time.monotonic() - started
    listener.close()
    for sock in held:
        sock.close()
    worker.join(15)
    assert took < 15, "the fetch was still waiting on a silent git server after 15 s"
    assert isinstance(outcome[0], SourceError) and "2s" in str(outcome[0]), outcome
