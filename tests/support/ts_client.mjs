// The official TypeScript SDK client: connect to URL with a bearer KEY, list tools, call one.
// Usage: node ts_client.mjs URL KEY TOOL ARGS_JSON   (prints one JSON line)
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, key, tool, args] = process.argv.slice(2);
const headers = key ? { Authorization: `Bearer ${key}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
const client = new Client({ name: "central-mcp-test", version: "1.0.0" });
await client.connect(transport);
const tools = (await client.listTools()).tools.map((t) => t.name);
const result = await client.callTool({ name: tool, arguments: JSON.parse(args) });
console.log(JSON.stringify({ protocolVersion: transport.protocolVersion, tools, result }));
await transport.terminateSession();
await client.close();
