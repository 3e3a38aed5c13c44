"""The host firewall for server networks: installed by the root set-up step, checked by serve.

An internal Docker network has no route out of the VM, but its containers still reach the host
itself (its gateway address, and every other address of the host, through INPUT). So two chains,
keyed to deploy.yaml's `network.pool`, and nothing else (Docker's default bridge and other
networks are untouched):

- `CMCP-INPUT` (jumped to from INPUT for packets from the pool): answers to connections the host
  opened (the proxy's) pass; a new connection passes only to a host-service relay port, and only
  towards an address of the interface it arrived on (its own network's gateway); the rest is dropped.
- `CMCP-FORWARD` (jumped to from DOCKER-USER, which Docker keeps first in FORWARD, for packets from
  or to the pool): egress servers never reach `network.egress_deny` (link-local, cloud metadata) nor
  another pool subnet, and no new connection is routed into the pool from outside (the LAN), whatever
  the FORWARD policy; internal networks have no route out already (Docker's rules).
- What arrives on `docker_gwbridge` (Swarm services on an egress overlay, engine: swarm) goes
  through the same two chains: no host port, no `egress_deny` address, no pool subnet.

`central-mcp firewall` (root; `make setup` and `.ci/run` run it) installs them idempotently, in
one iptables-restore transaction, and writes a stamp a non-root serve can read. Serve checks them
at start (the rules themselves when it may read them, else the stamp) and refuses to start server
containers while they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.settings import Settings
from pipeline.errors import NetworkError
from pipeline.network import BRIDGE_PREFIX

SWARM_BRIDGE = "docker_gwbridge"  # Swarm's bridge out of a node, for tasks on non-internal overlays
INPUT_CHAIN = "CMCP-INPUT"
FORWARD_CHAIN = "CMCP-FORWARD"
STAMP = Path("/run/central-mcp/firewall.json")  # /run is emptied at boot, as the rules are
MULTIPORT_MAX = 15
COMMAND_TIMEOUT = 20.0
CHECK_TTL = 30.0  # a good check is trusted this long; a bad one is repeated at every start
FIX = "run `sudo central-mcp firewall` (make setup does)"


@dataclass(frozen=True)
class Status:
    """Whether the firewall the settings need is in place, and why not."""

    ok: bool
    detail: str


def rules(settings: Settings) -> list[str]:
    """The chains' rules in iptables-restore form (without the table and COMMIT lines)."""
    net = settings.network
    ports = sorted({h.port for h in settings.host_services})
    lines = [f"-A {INPUT_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    for i in range(0, len(ports), MULTIPORT_MAX):
        chunk = ",".join(str(p) for p in ports[i : i + MULTIPORT_MAX])
        lines.append(
            f"-A {INPUT_CHAIN} -p tcp -m multiport --dports {chunk} "
            "-m addrtype --dst-type LOCAL --limit-iface-in -j RETURN"
        )
    lines.append(f"-A {INPUT_CHAIN} -j DROP")
    lines.append(f"-A {FORWARD_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
    lines += [f"-A {FORWARD_CHAIN} -d {cidr} -j DROP" for cidr in net.egress_deny]
    lines.append(f"-A {FORWARD_CHAIN} -d {net.pool} -m physdev ! --physdev-is-bridged -j DROP")
    return lines


def hooks(settings: Settings) -> list[tuple[str, str]]:
    """(built-in chain, rule) jumps into our chains: for packets from the pool (not the host's own,
    which come over lo), and for anything arriving on a server network's bridge."""
    pool = settings.network.pool
    bridges = f"{BRIDGE_PREFIX}+"
    return [
        ("INPUT", f"-s {pool} ! -i lo -j {INPUT_CHAIN}"),
        ("INPUT", f"-i {bridges} -j {INPUT_CHAIN}"),
        ("DOCKER-USER", f"-s {pool} -j {FORWARD_CHAIN}"),
        ("DOCKER-USER", f"-i {bridges} -j {FORWARD_CHAIN}"),
        # Into the pool from elsewhere (the LAN, routed by the host): dropped unless it answers a
        # container, whatever the FORWARD policy (Docker leaves it ACCEPT if forwarding was on).
        ("DOCKER-USER", f"-d {pool} -j {FORWARD_CHAIN}"),
        # Swarm services (engine: swarm) reach out through docker_gwbridge, not a cmcp bridge: the
        # same rules hold them (no host port, no egress_deny address). A no-op without Swarm.
        ("INPUT", f"-i {SWARM_BRIDGE} -j {INPUT_CHAIN}"),
        ("DOCKER-USER", f"-i {SWARM_BRIDGE} -j {FORWARD_CHAIN}"),
    ]


def install(settings: Settings) -> list[str]:
    """Install (or replace) the chains and their jumps; return what was done. Needs root."""
    _need_iptables()
    done: list[str] = []
    chains = _run(["iptables", "-S"]).splitlines()
    if "-N DOCKER-USER" not in chains:
        _run(["iptables", "-N", "DOCKER-USER"])  # dockerd makes it too; ours must exist first
        _run(["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"])
    body = [f":{INPUT_CHAIN} - [0:0]", f":{FORWARD_CHAIN} - [0:0]"]
    body += [f"-F {INPUT_CHAIN}", f"-F {FORWARD_CHAIN}", *rules(settings)]
    _run(["iptables-restore", "--noflush"], "\n".join(["*filter", *body, "COMMIT", ""]))
    done.append(f"{INPUT_CHAIN} and {FORWARD_CHAIN} hold {len(rules(settings))} rules")
    wanted = hooks(settings)
    for chain in dict.fromkeys(c for c, _ in wanted):
        for stale in _jumps(chain):
            if (chain, stale) not in wanted:  # a jump for an older pool
                _run(["iptables", "-D", chain, *stale.split()])
                done.append(f"removed {chain} {stale}")
    for chain, rule in reversed(wanted):
        if rule not in _jumps(chain):
            _run(["iptables", "-I", chain, "1", *rule.split()])
            done.append(f"added {chain} {rule}")
    _write_stamp(settings)
    return done


def check(settings: Settings) -> Status:
    """Whether the rules `settings` need are installed: read them when allowed, else the stamp."""
    if os.geteuid() == 0 and shutil.which("iptables"):
        return _check_rules(settings)
    return _check_stamp(settings)


class Guard:
    """Serve's view of the firewall: checked at start, again (when it was bad) before each container."""

    def __init__(self, settings: Settings, checker: object = None) -> None:
        self.settings = settings
        self._check = check if checker is None else checker
        self._status = Status(False, "not checked yet")
        self._at = -CHECK_TTL

    @property
    def status(self) -> Status:
        """The latest status (rechecked when bad or old)."""
        now = time.monotonic()
        if not self._status.ok or now - self._at > CHECK_TTL:
            self._status = self._check(self.settings)  # type: ignore[operator]
            self._at = now
        return self._status

    def require(self) -> None:
        """Raise NetworkError unless the firewall is in place."""
        status = self.status
        if not status.ok:
            raise NetworkError(
                f"server containers are not started without the host firewall: {status.detail}"
            )


def _check_rules(settings: Settings) -> Status:
    try:
        installed = {
            chain: _run(["iptables", "-S", chain]).splitlines() for chain in (INPUT_CHAIN, FORWARD_CHAIN)
        }
    except NetworkError:
        return Status(False, f"the {INPUT_CHAIN}/{FORWARD_CHAIN} chains are missing; {FIX}")
    have = set(installed[INPUT_CHAIN]) | set(installed[FORWARD_CHAIN])
    ports = {p for line in have for p in _ports(line)}
    missing = [r for r in rules(settings) if "--dports" not in r and r not in have]
    needed = {h.port for h in settings.host_services} - ports
    if missing or needed:
        what = missing[0] if missing else f"relay port(s) {sorted(needed)}"
        return Status(False, f"the firewall lacks {what}; {FIX}")
    for chain, rule in hooks(settings):
        if rule not in _jumps(chain):
            return Status(False, f"{chain} does not jump to our chain for {settings.network.pool}; {FIX}")
    return Status(True, f"installed for {settings.network.pool}")


def _check_stamp(settings: Settings) -> Status:
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return Status(False, f"no firewall set-up has run since boot ({STAMP} is missing); {FIX}")
    net = settings.network
    if stamp.get("pool") != net.pool or not set(net.egress_deny) <= set(stamp.get("egress_deny", ())):
        return Status(False, f"the firewall was set up for another network.pool or egress_deny; {FIX}")
    if not {h.port for h in settings.host_services} <= set(stamp.get("ports", ())):
        return Status(False, f"the firewall does not open every host service's port; {FIX}")
    if not {f"{c} {r}" for c, r in hooks(settings)} <= set(stamp.get("hooks", ())):
        # an older set-up (before docker_gwbridge's jumps): Swarm tasks with egress were not held
        return Status(False, f"the firewall was set up by an older central-mcp, without every jump; {FIX}")
    return Status(True, f"set up for {net.pool} (from {STAMP}: serve may not read the rules)")


def _write_stamp(settings: Settings) -> None:
    STAMP.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "pool": settings.network.pool,
        "egress_deny": list(settings.network.egress_deny),
        "ports": sorted({h.port for h in settings.host_services}),
        "hooks": [f"{chain} {rule}" for chain, rule in hooks(settings)],
        "installed_at": time.time(),
    }
    STAMP.write_text(json.dumps(data))


def _ports(line: str) -> list[int]:
    words = line.split()
    if "--dports" not in words:
        return []
    return [int(p) for p in words[words.index("--dports") + 1].split(",") if p.isdigit()]


def _jumps(chain: str) -> list[str]:
    """The rules of `chain` that jump to one of ours, as `-s ... -j ...` text."""
    lines = _run(["iptables", "-S", chain]).splitlines()
    prefix = f"-A {chain} "
    return [
        line[len(prefix) :]
        for line in lines
        if line.startswith(prefix) and line.split()[-1] in (INPUT_CHAIN, FORWARD_CHAIN)
    ]


def _need_iptables() -> None:
    if os.geteuid() != 0:
        raise NetworkError("installing the firewall needs root: run `sudo central-mcp firewall`")
    if shutil.which("iptables") is None:
        raise NetworkError("iptables is missing: `sudo apt-get install iptables`")


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"`{' '.join(argv)}` failed: {exc}") from exc
    if result.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()[-400:]}")
    return result.stdout
