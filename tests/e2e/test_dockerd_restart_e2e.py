"""End to end, in a CI stage of its own: the Docker daemon restarts under a serving provider.

Every container stops with the daemon (no live-restore: it refuses Swarm mode, and Docker's port
proxies die with the daemon anyway). Without restarting the provider, its monitor notices them
stopped as soon as the engine answers again, starts them again through the gate, re-reads their
addresses and swaps the routes: every live server answers through the proxy within 30 s of dockerd
coming back, and a host-service relay still reaches the host. Run with `--dockerd-restart` only
(.ci/run's last stage): it disturbs every other user of the engine.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from pipeline import firewall
from pipeline.dockerhost import DockerHost
from tests.support.dockerd import restart_dockerd
from tests.support.netns import MARK, granted_service, host_listener, probe_from
from tests.support.provider import Provider, running_provider

pytestmark = [pytest.mark.docker, pytest.mark.dockerd_restart]

RECOVERY_LIMIT = 30.0  # seconds from dockerd answering again to every live server answering
# Exits 0 on the SIGTERM the stopping daemon sends, so Docker's on-failure policy does not start it
# again: only the provider's monitor can bring this one back.
CLEAN_EXIT = ["sh", "-c", "trap 'exit 0' TERM; python3 /app/server.py & wait $!"]


def _answers(provider: Provider, servers: dict[str, tuple[str, dict[str, Any]]]) -> bool:
    for server, (tool, args) in servers.items():
        try:
            provider.call(server, tool, args)
        except Exception:  # any failure of the call means "not yet"
            return False
    return True


def test_every_live_server_answers_again_within_30s_of_dockerd_coming_back(
    tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost
) -> None:
    """After dockerd stops and starts again, the same serve process has every server answering
    within 30 s, on fresh containers, and the granted host service is still relayed."""
    tag = secrets.token_hex(3)
    relayed = f"restart-relayed-{tag}"
    with granted_service(relayed) as service:
        port, settings = service.port, service.settings
        with running_provider(
            tmp_path_factory.mktemp("restart"), docker_host, extra_config=service.config
        ) as provider:
            provider.names.add(relayed)
            workspace = provider.clone(tmp_path_factory.mktemp("clone") / "work")
            echo = workspace.put("echo")
            example = workspace.put_example()
            workspace.put("echo", name=relayed, manifest=lambda d: d["run"].update(host_services=["standin"]))
            clean = workspace.put(
                "echo",
                name=provider.name("clean-exit"),
                manifest=lambda d: d["run"].update(command=CLEAN_EXIT),
            )
            workspace.commit("servers for the daemon restart")
            push = workspace.push()
            assert push.ok, push.output
            servers: dict[str, tuple[str, dict[str, Any]]] = {
                echo: ("greet", {"name": "Ada"}),
                relayed: ("greet", {"name": "Ada"}),
                clean: ("greet", {"name": "Ada"}),
                example: ("search_listings", {"city": "Lisbon", "guests": 2}),
            }
            assert _answers(provider, servers)
            serve = provider.proc
            assert serve is not None
            since = provider.last_deploy_id()

            back = restart_dockerd()
            while not _answers(provider, servers):
                assert time.monotonic() - back < RECOVERY_LIMIT, (
                    f"not every server answered within {RECOVERY_LIMIT:.0f}s of dockerd coming back:\n"
                    + provider.serve_log()[-4000:]
                )
                time.sleep(0.5)
            recovered = time.monotonic() - back
            restarts = [d for d in provider.deploys() if d["id"] > since and d["source"] == "restart"]
            print(
                f"every live server answered {recovered:.1f}s after dockerd came back; restart deploys: "
                + (", ".join(f"#{d['id']} {d['message']} ({d['status']})" for d in restarts) or "none")
            )

            assert serve.poll() is None and provider.proc is serve, "the provider was restarted"
            for server in servers:
                assert provider.running(server), f"{server} has no running container"
            assert firewall.check(settings).ok, "the daemon's restart dropped the firewall"
            container = provider.docker.client.containers.get(provider.running(relayed)[0])
            with host_listener("127.0.0.1", port):
                assert probe_from(container, [f"standin:{port}"]) == {
                    f"standin:{port}": "open:" + MARK.decode()
                }
