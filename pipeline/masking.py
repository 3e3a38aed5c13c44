"""Masking secret values in output, and the common encodings a server might print them in.

A careless or hostile server prints its secret base64-, hex-, URL- or JSON-encoded as readily as
plain. So a Masker hides, for each value: the value itself (and each line of a multi-line value);
its base64 in the standard and URL-safe alphabets, with and without padding, and the part of it
that stays the same wherever the value sits inside a longer base64 string (three alignments);
its hex in lower and upper case; its URL encodings (`quote`, `quote_plus`, lower-case escapes);
and its JSON string escapes. Short values and short encoded fragments are left alone: hiding
every three-letter word of a log helps nobody.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "****"
CUT = "…"  # what ends an excerpt cut short (gate.py): the start of a form before it is hidden too
MIN_MASKED_LENGTH = 3  # a value shorter than this is not masked at all
MIN_ENCODED_LENGTH = 6  # an encoded form (or fragment) shorter than this is not masked
ALIGNMENT_SKIP = (0, 2, 3)  # base64 characters that mix bits of what precedes a value offset by 0, 1, 2 bytes

Encoder = Callable[[bytes], bytes]


def encodings(value: str) -> set[str]:
    """Every form of `value` a Masker hides: the value and its common encodings."""
    if len(value) < MIN_MASKED_LENGTH:
        return set()
    data = value.encode("utf-8")
    forms = {value}
    forms |= {line for line in value.splitlines() if len(line.strip()) >= MIN_ENCODED_LENGTH}
    encoded = (
        _base64_forms(data, base64.b64encode)
        | _base64_forms(data, base64.urlsafe_b64encode)
        | {data.hex(), data.hex().upper()}
        | _url_forms(value)
        | _json_forms(value)
    )
    return forms | {form for form in encoded if len(form) >= MIN_ENCODED_LENGTH}


class Masker:
    """Replaces every secret value, and its common encodings, in text with ****."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = sorted({v for v in values if len(v) >= MIN_MASKED_LENGTH}, key=len, reverse=True)
        forms = set().union(*(encodings(v) for v in self.values)) if self.values else set()
        self.patterns = sorted(forms, key=len, reverse=True)  # a longer form before its fragments

    def extended(self, values: Iterable[str]) -> Masker:
        """A masker that also hides `values`."""
        return Masker([*self.values, *values])

    def __call__(self, text: str) -> str:
        for pattern in self.patterns:
            if pattern in text:
                text = text.replace(pattern, MASK)
        return self._cut_short(text) if CUT in text else text

    def _cut_short(self, text: str) -> str:
        """Hide the start of a form cut off by a `…` (an excerpt of a server's answer): cut after
        its last character but one, a value showed all of that to whoever read the excerpt."""
        parts = text.split(CUT)
        for i, part in enumerate(parts[:-1]):
            start = len(part)  # where the longest start of a form that ends the part begins
            for pattern in self.patterns:
                at = part.find(pattern[0], max(0, len(part) - len(pattern) + 1))
                while 0 <= at <= len(part) - MIN_ENCODED_LENGTH:
                    if pattern.startswith(part[at:]):
                        start = min(start, at)
                        break
                    at = part.find(pattern[0], at + 1)
            if start < len(part):
                parts[i] = part[:start] + MASK
        return CUT.join(parts)

    def data(self, value: Any) -> Any:
        """`value` (decoded JSON: what a container answered) with every string in it masked."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.data(item) for item in value]
        if isinstance(value, dict):
            return {self(str(key)): self.data(item) for key, item in value.items()}
        return value


def _base64_forms(data: bytes, encode: Encoder) -> set[str]:
    """The base64 of `data` alone (padded and not), and the characters that depend on `data` only
    when it starts 0, 1 or 2 bytes into a longer encoded string."""
    whole = encode(data).decode("ascii")
    forms = {whole, whole.rstrip("=")}
    for shift, skip in enumerate(ALIGNMENT_SKIP):
        shifted = encode(b"\0" * shift + data).decode("ascii")
        forms.add(shifted[skip : 8 * (shift + len(data)) // 6])
    return forms


def _url_forms(value: str) -> set[str]:
    forms = {quote(value, safe=""), quote(value), quote_plus(value), quote_plus(value, safe="/")}
    return forms | {_lower_escapes(form) for form in forms}


def _lower_escapes(form: str) -> str:
    parts = form.split("%")
    return parts[0] + "".join("%" + p[:2].lower() + p[2:] for p in parts[1:])


def _json_forms(value: str) -> set[str]:
    forms = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    return forms | {form.replace("/", "\\/") for form in forms}
