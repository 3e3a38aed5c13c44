"""999x-ray-analyzer MCP server: file analysis tools over Streamable HTTP."""

import logging
import os
import sys
from typing import Annotated, Any

import analysis
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL = os.environ.get("LOG_LEVEL", "info").upper()
LOG_LEVEL = LOG_LEVEL if LOG_LEVEL in LEVELS else "INFO"

# Configure stdout logging before MCPServer() does its own basicConfig (stderr).
logging.basicConfig(
    stream=sys.stdout, level=LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)

app = MCPServer(
    "999x-ray-analyzer",
    version="1.0.0",
    instructions="Analyze one source file: pass its file name and full text content.",
    log_level=LOG_LEVEL,  # type: ignore[arg-type]
)

Filename = Annotated[str, Field(description="File name or path, e.g. src/app.py")]
Content = Annotated[str, Field(description="Full text of the file", max_length=2_000_000)]


@app.tool()
def detect_language(filename: Filename, content: Content = "") -> dict[str, str]:
    """Detect a file's programming language from its name, shebang or content."""
    return analysis.detect_language(filename, content)


@app.tool()
def line_stats(content: Content, filename: Filename = "") -> dict[str, Any]:
    """Count total, code, blank and comment lines of a file."""
    return analysis.line_stats(content, filename)


@app.tool()
def symbol_stats(filename: Filename, content: Content) -> dict[str, Any]:
    """List functions, classes and imports (Python via ast; JS/TS/Go/Rust/Java/C via regex)."""
    return analysis.symbol_stats(filename, content)


@app.tool()
def complexity_score(filename: Filename, content: Content) -> dict[str, Any]:
    """Score cyclomatic complexity per function, 0-100 (higher is simpler), with a rating."""
    return analysis.complexity_score(filename, content)


@app.tool()
def summarize(filename: Filename, content: Content) -> dict[str, Any]:
    """Summarize a file with a local Ollama model if configured, else heuristically."""
    return analysis.summarize(filename, content)


@app.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
async def healthz(_request: Request) -> JSONResponse:
    """Plain liveness probe outside the MCP protocol."""
    return JSONResponse({"status": "ok", "ollama": bool(os.environ.get("OLLAMA_URL"))})


def main() -> None:
    """Serve Streamable HTTP at /mcp on 0.0.0.0:$PORT until SIGTERM."""
    http_app = app.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,
        # The proxy and `docker -p` set arbitrary Host headers; do not pin them to localhost.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host="0.0.0.0",
    )
    uvicorn.run(
        http_app,
        host="0.0.0.0",
        port=int(os.environ.get("PORT", "8080")),
        log_level=LOG_LEVEL.lower(),
        log_config=None,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
