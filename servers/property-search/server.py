"""property-search MCP server: search and compare rental listings over Streamable HTTP."""

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import listings
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
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
    "property-search",
    version="1.0.0",
    instructions="Search, inspect and compare rental properties. Dates are YYYY-MM-DD.",
    log_level=LOG_LEVEL,  # type: ignore[arg-type]
)

IsoDate = Annotated[str | None, Field(description="ISO date YYYY-MM-DD")]


@contextmanager
def tool_errors() -> Iterator[None]:
    """Turn a ListingError into a ToolError whose message reaches the client."""
    try:
        yield
    except listings.ListingError as exc:
        raise ToolError(str(exc)) from exc


@app.tool()
def search_listings(
    city: Annotated[str, Field(description="City to search, e.g. Lisbon")],
    min_price: Annotated[float | None, Field(description="Lowest price per night")] = None,
    max_price: Annotated[float | None, Field(description="Highest price per night")] = None,
    guests: Annotated[int | None, Field(description="Number of guests")] = None,
    check_in: IsoDate = None,
    check_out: IsoDate = None,
) -> listings.SearchResult:
    """Search rentals in a city by nightly price, guest count and free dates."""
    with tool_errors():
        return listings.search_listings(city, min_price, max_price, guests, check_in, check_out)


@app.tool()
def get_listing(
    listing_id: Annotated[str, Field(description="Listing id, e.g. lst-001")],
) -> listings.Listing:
    """Get every detail of one listing, including booked date ranges."""
    with tool_errors():
        return listings.get_listing(listing_id)


@app.tool()
def compare_listings(
    listing_ids: Annotated[list[str], Field(description="2 to 5 listing ids")],
    check_in: IsoDate = None,
    check_out: IsoDate = None,
) -> listings.Comparison:
    """Compare 2-5 listings: price, stay total and availability, rating, size, amenities."""
    with tool_errors():
        return listings.compare_listings(listing_ids, check_in, check_out)


@app.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
async def healthz(_request: Request) -> JSONResponse:
    """Plain liveness probe outside the MCP protocol."""
    return JSONResponse({"status": "ok", "listings": len(listings.load_listings())})


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
