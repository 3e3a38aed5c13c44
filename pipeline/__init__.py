"""central-mcp: a private MCP server provider for one VM."""

__version__ = "0.1.0"
