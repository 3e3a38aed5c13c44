"""The host firewall for server networks: its rules, the serve-side guard, and (as root) a real install."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipeline import firewall
from pipeline.config.settings import HostService, NetworkConfig, Settings
from pipeline.errors import NetworkError
from tests.conftest import IN_CI


def _settings(ports: tuple[int, ...] = (), pool: str = "10.213.0.0/16") -> Settings:
    services = tuple(HostService(f"s{p}", "127.0.0.1", p, ("a",)) for p in ports)
    return Settings(
        config_path=Path("deploy.yaml"),
        state_dir=Path(".central-mcp"),
        network=NetworkConfig(pool=pool),
        host_services=services,
    )


def test_rules_drop_new_connections_to_the_host_but_relay_ports_to_the_own_gateway() -> None:
    """INPUT: answers pass, relay ports pass only towards the arrival interface's address, the rest drops."""
    rules = firewall.rules(_settings((11434, 8000)))
    assert rules[0].endswith("--ctstate RELATED,ESTABLISHED -j RETURN")
    assert "--dports 8000,11434 -m addrtype --dst-type LOCAL --limit-iface-in -j RETURN" in rules[1]
    assert rules[2] == "-A CMCP-INPUT -j DROP"


def test_rules_keep_egress_from_link_local_metadata_and_other_server_subnets() -> None:
    """FORWARD: the deny list and routed traffic into the pool (another server's subnet) drop."""
    rules = firewall.rules(_settings())
    assert "-A CMCP-FORWARD -d 169.254.0.0/16 -j DROP" in rules
    assert "-A CMCP-FORWARD -d 100.100.100.200/32 -j DROP" in rules
    assert "-A CMCP-FORWARD -d 10.213.0.0/16 -m physdev ! --physdev-is-bridged -j DROP" in rules


def test_many_relay_ports_are_split_into_multiport_rules_of_fifteen() -> None:
    """iptables' multiport takes at most 15 ports per rule."""
    rules = firewall.rules(_settings(tuple(range(20000, 20020))))
    assert sum("--dports" in r for r in rules) == 2


def test_hooks_catch_the_pool_and_the_bridges_but_never_the_default_bridge_or_loopback() -> None:
    """Jumps match the pool (not over lo: the host talking to a gateway address) and `cmcp+` bridges only."""
    hooks = firewall.hooks(_settings())
    assert ("INPUT", "-s 10.213.0.0/16 ! -i lo -j CMCP-INPUT") in hooks
    assert ("DOCKER-USER", "-i cmcp+ -j CMCP-FORWARD") in hooks
    assert not any("docker0" in rule or "172.17" in rule for _, rule in hooks)


def test_new_connections_routed_into_the_pool_from_outside_are_dropped() -> None:
    """Packets *to* the pool go through CMCP-FORWARD too, whose last rule drops a routed (not bridged)
    new connection: an egress server's container is unreachable from the LAN even where the host's
    FORWARD policy is ACCEPT (Docker leaves it so when IP forwarding was on before it started)."""
    settings = _settings()
    assert ("DOCKER-USER", "-d 10.213.0.0/16 -j CMCP-FORWARD") in firewall.hooks(settings)
    rules = firewall.rules(settings)
    established = rules.index("-A CMCP-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
    routed_in = rules.index("-A CMCP-FORWARD -d 10.213.0.0/16 -m physdev ! --physdev-is-bridged -j DROP")
    assert established < routed_in  # answers to what the containers opened still come back


def test_the_guard_refuses_containers_while_the_firewall_is_missing_and_rechecks() -> None:
    """A missing firewall raises a NetworkError naming the fix; once installed, the next check passes."""
    answers = [
        firewall.Status(False, "no chains; run `sudo central-mcp firewall`"),
        firewall.Status(True, "ok"),
    ]
    guard = firewall.Guard(_settings(), lambda settings: answers.pop(0))
    with pytest.raises(NetworkError, match="sudo central-mcp firewall"):
        guard.require()
    guard.require()
    assert guard.status.ok and answers == []  # a good answer is kept, not asked again


def test_a_stamp_for_another_pool_or_fewer_ports_is_not_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serve without root reads the set-up step's stamp: it must cover the pool and every service port."""
    monkeypatch.setattr(firewall, "STAMP", tmp_path / "firewall.json")
    assert not firewall._check_stamp(_settings()).ok
    firewall._write_stamp(_settings((11434,)))
    assert firewall._check_stamp(_settings((11434,))).ok
    assert not firewall._check_stamp(_settings((11434, 8000))).ok
    assert not firewall._check_stamp(_settings(pool="10.214.0.0/16")).ok


def test_a_stamp_written_before_the_swarm_bridges_jumps_is_not_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set-up from before docker_gwbridge was hooked left egress Swarm tasks unheld: serve (not
    root, so it reads the stamp) must ask for the set-up again, not trust the old stamp."""
    monkeypatch.setattr(firewall, "STAMP", tmp_path / "firewall.json")
    old = {"pool": "10.213.0.0/16", "egress_deny": list(NetworkConfig().egress_deny), "ports": []}
    firewall.STAMP.write_text(json.dumps(old))
    status = firewall._check_stamp(_settings())
    assert not status.ok and "older central-mcp" in status.detail
    firewall._write_stamp(_settings())
    assert firewall._check_stamp(_settings()).ok


@pytest.mark.docker
@pytest.mark.skipif(
    os.geteuid() != 0 and not IN_CI, reason="installing iptables rules needs root (in CI it must run)"
)
def test_install_is_idempotent_and_leaves_every_other_rule_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installing twice gives the same rules; nothing outside our chains and jumps changes."""
    monkeypatch.setattr(firewall, "STAMP", tmp_path / "firewall.json")
    settings = _settings()
    firewall.install(settings)
    before = _others()
    first = _ours()
    assert firewall.install(settings) == ["CMCP-INPUT and CMCP-FORWARD hold 6 rules"]
    assert _ours() == first and _others() == before
    assert firewall.check(settings).ok


def _save() -> list[str]:
    out = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("-A")]


def _ours() -> list[str]:
    return [line for line in _save() if "CMCP-" in line]


def _others() -> list[str]:
    """The rest of INPUT and DOCKER-USER (Docker rewrites its own chains as containers come and go)."""
    return [line for line in _save() if "CMCP-" not in line and line.split()[1] in ("INPUT", "DOCKER-USER")]
