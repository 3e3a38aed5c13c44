"""Helpers shared by the tests; fixtures stay in the conftest.py files.

- `clock`: `FakeClock`, the one clock tests move by hand (inject it, and its `sleep`).
- `loopback`: `free_port`, and real HTTP servers (any ASGI app, an SDK MCP server) on 127.0.0.1.
- `proxy_rig`: the proxy served on loopback around a real Router, Gatekeeper, Usage and Store.
- `provider`: the end-to-end harness, a real `central-mcp serve` with its bare repo and clones.
- `readme`: the README's own yaml examples, so tests and documentation cannot drift apart.
"""
