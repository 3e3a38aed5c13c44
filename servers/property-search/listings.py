"""Rental listing search, lookup and comparison over a JSON data set (no MCP imports)."""

from __future__ import annotations

import difflib
import json
import re
from datetime import date
from functools import lru_cache
from pathlib import Path

from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

DATA_PATH = Path(__file__).resolve().parent / "data" / "listings.json"
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_NIGHTS = 90


class ListingError(ValueError):
    """A request the listing tools cannot satisfy; the message is meant for the caller."""


class DateRange(TypedDict):
    """Booked nights from start (inclusive) to end (the checkout day, exclusive)."""

    start: str
    end: str


class Listing(TypedDict):
    """One rental listing as stored in the data set."""

    id: str
    title: str
    city: str
    neighbourhood: str
    price_per_night: float
    currency: str
    max_guests: int
    bedrooms: int
    rating: float
    reviews: int
    amenities: list[str]
    unavailable: list[DateRange]


class ListingSummary(TypedDict):
    """A search hit, with the stay total when dates were given."""

    id: str
    title: str
    neighbourhood: str
    price_per_night: float
    total_price: float | None
    max_guests: int
    bedrooms: int
    rating: float


class SearchResult(TypedDict):
    """Search hits sorted by rating (best first), then price."""

    city: str
    nights: int | None
    count: int
    results: list[ListingSummary]


class ComparisonRow(TypedDict):
    """One column of a comparison table."""

    id: str
    title: str
    city: str
    price_per_night: float
    total_price: float | None
    available: bool | None
    rating: float
    bedrooms: int
    max_guests: int
    extra_amenities: list[str]
    missing_amenities: list[str]


class Comparison(TypedDict):
    """Side-by-side comparison of 2 to 5 listings."""

    nights: int | None
    rows: list[ComparisonRow]
    common_amenities: list[str]
    cheapest_id: str
    best_rated_id: str


@lru_cache(maxsize=1)
def load_listings(path: Path = DATA_PATH) -> tuple[Listing, ...]:
    """Load and cache the listing data set."""
    with path.open(encoding="utf-8") as fh:
        return tuple(json.load(fh))


def _by_id() -> dict[str, Listing]:
    """Index listings by id."""
    return {item["id"]: item for item in load_listings()}


def parse_date(value: str, field: str) -> date:
    """Parse a strict YYYY-MM-DD date or raise ListingError naming the field."""
    if not _ISO_DATE.match(value):
        raise ListingError(f"{field} must be an ISO date YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ListingError(f"{field} is not a real date: {value!r}") from exc


def stay_nights(check_in: str | None, check_out: str | None) -> tuple[date, date] | None:
    """Validate an optional stay and return (check_in, check_out) or None."""
    if check_in is None and check_out is None:
        return None
    if check_in is None or check_out is None:
        raise ListingError("give both check_in and check_out, or neither")
    start, end = parse_date(check_in, "check_in"), parse_date(check_out, "check_out")
    if end <= start:
        raise ListingError("check_out must be after check_in")
    if (end - start).days > MAX_NIGHTS:
        raise ListingError(f"stays are limited to {MAX_NIGHTS} nights")
    return start, end


def is_available(listing: Listing, start: date, end: date) -> bool:
    """True when no booked range overlaps the nights [start, end)."""
    return all(
        not (start < date.fromisoformat(r["end"]) and date.fromisoformat(r["start"]) < end)
        for r in listing["unavailable"]
    )


def _total(listing: Listing, stay: tuple[date, date] | None) -> float | None:
    """Price for the whole stay, or None without dates."""
    if stay is None:
        return None
    return round(listing["price_per_night"] * (stay[1] - stay[0]).days, 2)


def _resolve_city(city: str) -> str:
    """Match a city case-insensitively against the data set."""
    cities = sorted({item["city"] for item in load_listings()})
    for known in cities:
        if known.casefold() == city.strip().casefold():
            return known
    raise ListingError(f"no listings in {city!r}; known cities: {', '.join(cities)}")


def search_listings(
    city: str,
    min_price: float | None = None,
    max_price: float | None = None,
    guests: int | None = None,
    check_in: str | None = None,
    check_out: str | None = None,
) -> SearchResult:
    """Find listings in a city by nightly price, party size and free dates."""
    known_city = _resolve_city(city)
    if min_price is not None and max_price is not None and min_price > max_price:
        raise ListingError("min_price must not exceed max_price")
    if guests is not None and guests < 1:
        raise ListingError("guests must be at least 1")
    stay = stay_nights(check_in, check_out)
    hits = [
        item
        for item in load_listings()
        if item["city"] == known_city
        and (min_price is None or item["price_per_night"] >= min_price)
        and (max_price is None or item["price_per_night"] <= max_price)
        and (guests is None or item["max_guests"] >= guests)
        and (stay is None or is_available(item, *stay))
    ]
    hits.sort(key=lambda item: (-item["rating"], item["price_per_night"]))
    results: list[ListingSummary] = [
        {
            "id": item["id"],
            "title": item["title"],
            "neighbourhood": item["neighbourhood"],
            "price_per_night": item["price_per_night"],
            "total_price": _total(item, stay),
            "max_guests": item["max_guests"],
            "bedrooms": item["bedrooms"],
            "rating": item["rating"],
        }
        for item in hits
    ]
    nights = (stay[1] - stay[0]).days if stay else None
    return {"city": known_city, "nights": nights, "count": len(results), "results": results}


def get_listing(listing_id: str) -> Listing:
    """Return one listing, or raise ListingError with a close-match hint."""
    index = _by_id()
    key = listing_id.strip().lower()
    if key in index:
        return index[key]
    close = difflib.get_close_matches(key, index, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; ids look like 'lst-001'"
    raise ListingError(f"unknown listing id {listing_id!r}{hint}")


def compare_listings(
    listing_ids: list[str], check_in: str | None = None, check_out: str | None = None
) -> Comparison:
    """Compare 2-5 listings: price, stay total, availability, rating, size and amenities."""
    if not 2 <= len(listing_ids) <= 5:
        raise ListingError(f"compare 2 to 5 listings, got {len(listing_ids)}")
    listings = [get_listing(listing_id) for listing_id in listing_ids]
    if len({item["id"] for item in listings}) != len(listings):
        raise ListingError("listing_ids contains duplicates")
    stay = stay_nights(check_in, check_out)
    amenity_sets = [set(item["amenities"]) for item in listings]
    common = set.intersection(*amenity_sets)
    union = set.union(*amenity_sets)
    rows: list[ComparisonRow] = [
        {
            "id": item["id"],
            "title": item["title"],
            "city": item["city"],
            "price_per_night": item["price_per_night"],
            "total_price": _total(item, stay),
            "available": is_available(item, *stay) if stay else None,
            "rating": item["rating"],
            "bedrooms": item["bedrooms"],
            "max_guests": item["max_guests"],
            "extra_amenities": sorted(amenities - common),
            "missing_amenities": sorted(union - amenities),
        }
        for item, amenities in zip(listings, amenity_sets, strict=True)
    ]
    return {
        "nights": (stay[1] - stay[0]).days if stay else None,
        "rows": rows,
        "common_amenities": sorted(common),
        "cheapest_id": min(listings, key=lambda item: item["price_per_night"])["id"],
        "best_rated_id": max(listings, key=lambda item: item["rating"])["id"],
    }
