// The official TypeScript SDK client: connect to URL with a bearer KEY, list tools, call one.
// Usage: node ts_client.mjs URL KEY TOOL ARGS_JSON [MODE]   (prints one JSON line)
// MODE "v1" (the default): @modelcontextprotocol/sdk 1.x, the session era's initialize handshake.
// MODE "legacy" or "auto": the v2 client (@modelcontextprotocol/client) with that versionNegotiation
// mode; "auto" probes the 2026-07-28 era with server/discover and falls back to initialize.
// MODE a version ("2026-07-28"): the v2 client pinned to it, no probe and no fallback.
const [url, key, tool, args, mode = "v1"] = process.argv.slice(2);
const sdk =
  mode === "v1"
    ? {
        ...(await import("@modelcontextprotocol/sdk/client/index.js")),
        ...(await import("@modelcontextprotocol/sdk/client/streamableHttp.js")),
      }
    : await import("@modelcontextprotocol/client");
const headers = key ? { Authorization: `Bearer ${key}` } : {};
const transport = new sdk.StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
const pinned = /^\d{4}-\d{2}-\d{2}$/.test(mode) ? { pin: mode } : mode;
const options = mode === "v1" ? {} : { versionNegotiation: { mode: pinned } };
const client = new sdk.Client({ name: "central-mcp-test", version: "1.0.0" }, options);
await client.connect(transport);
const tools = (await client.listTools()).tools.map((t) => t.name);
const result = await client.callTool({ name: tool, arguments: JSON.parse(args) });
const protocolVersion = client.getNegotiatedProtocolVersion?.() ?? transport.protocolVersion;
const era = client.getProtocolEra?.() ?? "legacy";
const session = transport.sessionId ?? null;
console.log(JSON.stringify({ protocolVersion, era, session, tools, result }));
if (session) await transport.terminateSession();
await client.close();
