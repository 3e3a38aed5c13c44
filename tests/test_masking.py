"""pipeline/masking.py: a secret value and its common encodings are masked wherever they appear."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest

from pipeline.masking import MASK, Masker, encodings

VALUE = 'p@ss/w0rd "q" +&=%ü\\tail-1234567'
PLAIN = "s3cr3t-value-123"


def _b64_at(data: bytes, shift: int, encode: Callable[[bytes], bytes]) -> str:
    """The base64 of `data` with `shift` bytes before it and some after, as a longer stream holds it."""
    return encode(b"<" * shift + data + b">>tail").decode()


def _shown(text: str, value: str) -> bool:
    """Whether `text` holds `value` or any 6+ character run of its base64 at any alignment."""
    data = value.encode()
    for shift, skip in enumerate((0, 2, 3)):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            core = encode(b"\0" * shift + data).decode()[skip : 8 * (shift + len(data)) // 6]
            if core and core in text:
                return True
    return value in text


ENCODED: dict[str, Callable[[str], str]] = {
    "plain": lambda v: v,
    "base64": lambda v: base64.b64encode(v.encode()).decode(),
    "base64 without padding": lambda v: base64.b64encode(v.encode()).decode().rstrip("="),
    "url-safe base64": lambda v: base64.urlsafe_b64encode(v.encode()).decode(),
    "url-safe base64 without padding": lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("="),
    "hex": lambda v: v.encode().hex(),
    "HEX": lambda v: v.encode().hex().upper(),
    "quote": lambda v: quote(v, safe=""),
    "quote keeping /": lambda v: quote(v),
    "quote_plus": lambda v: quote_plus(v),
    "lower-case escapes": lambda v: quote(v, safe="").lower(),
    "json": lambda v: json.dumps(v)[1:-1],
    "json, non-ASCII kept": lambda v: json.dumps(v, ensure_ascii=False)[1:-1],
    "json, slash escaped": lambda v: json.dumps(v)[1:-1].replace("/", "\\/"),
}


@pytest.mark.parametrize("value", [VALUE, PLAIN, "abcdefg"], ids=["special", "plain", "short"])
@pytest.mark.parametrize("form", sorted(ENCODED))
def test_each_encoding_of_a_value_is_masked(form: str, value: str) -> None:
    """The value's plain, base64 (both alphabets, padded or not), hex, URL and JSON forms become ****."""
    encoded = ENCODED[form](value)
    if form == "lower-case escapes" and "%" not in encoded:
        encoded = quote(value, safe="")  # lower() would change the value itself, not its escapes
    masked = Masker([value])(f"before {encoded} after")
    assert masked == f"before {MASK} after"


@pytest.mark.parametrize("shift", [0, 1, 2])
@pytest.mark.parametrize("alphabet", ["standard", "url-safe"])
@pytest.mark.parametrize(
    "value", [VALUE, PLAIN, PLAIN + "x", PLAIN + "xy"], ids=["special", "n", "n+1", "n+2"]
)
def test_base64_of_a_value_inside_a_longer_string_is_masked_at_every_alignment(
    shift: int, alphabet: str, value: str
) -> None:
    """A value 0, 1 or 2 bytes into a longer base64 stream leaves no run of its own characters."""
    encode = base64.b64encode if alphabet == "standard" else base64.urlsafe_b64encode
    text = _b64_at(value.encode(), shift, encode)
    masked = Masker([value])(text)
    assert MASK in masked
    assert not _shown(masked, value)


def test_a_json_document_holding_the_value_keeps_its_shape() -> None:
    """A JSON object with the value as a field shows the field's value as **** and the rest as is."""
    text = json.dumps({"token": VALUE, "ok": True})
    assert Masker([VALUE])(text) == '{"token": "****", "ok": true}'


def test_each_line_of_a_multi_line_value_is_masked() -> None:
    """A PEM-like value printed line by line is masked line by line."""
    value = "-----BEGIN KEY-----\nQUJDREVGR0hJSktMTU5PUA==\n-----END KEY-----"
    for line in value.splitlines():
        assert Masker([value])(f"log: {line}") == f"log: {MASK}"


def test_short_values_and_fragments_are_left_alone() -> None:
    """A value under three characters is not masked, and encoded forms under six are not either."""
    assert encodings("ab") == set()
    assert all(len(form) >= 6 or form == "abc" for form in encodings("abc"))
    assert Masker(["ab"])("ab cd") == "ab cd"


def test_extended_masks_old_and_new_values() -> None:
    """A masker extended with more values hides both the first values and the new ones."""
    masker = Masker([PLAIN]).extended(["another-secret"])
    assert masker(f"{PLAIN} and another-secret") == f"{MASK} and {MASK}"


def test_a_longer_encoding_is_replaced_before_its_fragments() -> None:
    """The whole base64 goes, not a fragment of it with padding left beside the mask."""
    encoded = base64.b64encode(PLAIN.encode()).decode()
    assert Masker([PLAIN])(f"[{encoded}]") == f"[{MASK}]"


def test_masking_a_build_log_line_takes_microseconds() -> None:
    """Twenty secrets masked over ten thousand ordinary lines stay well under a second."""
    masker = Masker([f"secret-number-{i}-{'x' * 24}" for i in range(20)])
    line = "#7 [3/5] RUN pip install --no-index --find-links /wheels -r requirements.txt 0.4s"
    started = time.perf_counter()
    for _ in range(10_000):
        masker(line)
    assert time.perf_counter() - started < 1.0


def test_data_masks_every_string_of_a_decoded_answer() -> None:
    """Keys, values and nested strings of decoded JSON are masked; numbers and booleans are kept."""
    answer = [{"name": "t", "description": f"key {PLAIN}", "inputSchema": {PLAIN: [PLAIN, 1, True]}}]
    masked = Masker([PLAIN]).data(answer)
    assert masked == [{"name": "t", "description": f"key {MASK}", "inputSchema": {MASK: [MASK, 1, True]}}]
