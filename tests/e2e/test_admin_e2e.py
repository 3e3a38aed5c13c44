"""End to end: what a provider with an admin token shows to a caller without it."""

from __future__ import annotations

import json
import secrets
import urllib.request
from pathlib import Path

import pytest

from pipeline.dockerhost import DockerHost
from tests.support.provider import VMSecrets, running_provider

pytestmark = [pytest.mark.docker]


def test_metrics_need_the_admin_token_when_one_is_set(tmp_path: Path, docker_host: DockerHost) -> None:
    """/metrics names every server and project (restricted ones too): with an admin token set it
    answers 401 without it and the metrics with it (Prometheus sends it as a bearer token)."""
    token = f"admin-{secrets.token_hex(8)}"
    vm = VMSecrets(env={"E2E_ADMIN_TOKEN": token})
    with running_provider(tmp_path, docker_host, "admin_token_env: E2E_ADMIN_TOKEN\n", vm=vm) as provider:
        status, _, body = provider.get("/metrics")
        assert status == 401, body
        request = urllib.request.Request(
            f"{provider.base}/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
            assert b"central_mcp_proxy_requests" in answer.read()
        status, _, body = provider.get("/healthz")
        assert status in (200, 503) and "checks" in json.loads(body)  # health stays open to monitors
