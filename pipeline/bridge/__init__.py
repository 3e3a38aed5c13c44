"""The stdio bridge: serves a stdio MCP program over streamable HTTP inside its container.

Standard library only, so it runs under any image's `python3`: the provider copies this package
into a layer over the server's image and starts it as the container's entrypoint. Modules:
wire (HTTP/1.1), child (one stdio process), hub (sessions and id rewriting over a process),
pool (warm processes and the cap), app (the MCP endpoint), main (the command line), sandbox
(Landlock: each process writes only its own directory), stats (process counts for the probes).
"""
