"""pipeline/contract.py: the tool contract diff, schema narrowing and the semver rule (pure)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pipeline import contract
from pipeline.contract import Change, Surface
from pipeline.errors import ContractBroken


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An object schema with `properties` and `required`."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required is not None:
        schema["required"] = required
    return schema


STR = {"type": "string"}
INT = {"type": "integer"}


def _tool(name: str, schema: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A tools/list entry."""
    return {"name": name, "inputSchema": schema or _obj({}), **extra}


def test_a_new_required_property_narrows() -> None:
    """Requiring a property the old schema did not require is a narrowing."""
    old = _obj({"q": STR, "limit": INT}, ["q"])
    new = _obj({"q": STR, "limit": INT}, ["q", "limit"])
    assert contract.narrowing(old, new) == ["new required property 'limit'"]


def test_a_removed_property_narrows() -> None:
    """A property the old schema accepted and the new one lacks is a narrowing."""
    assert contract.narrowing(_obj({"q": STR, "x": INT}), _obj({"q": STR})) == ["property 'x' removed"]


def test_a_type_change_narrows_unless_it_widens() -> None:
    """string -> integer narrows; integer -> number and string -> [string, null] widen."""
    assert contract.narrowing(_obj({"n": STR}), _obj({"n": INT})) == ['n: type "string" became "integer"']
    assert contract.narrowing(_obj({"n": INT}), _obj({"n": {"type": "number"}})) == []
    assert contract.narrowing(_obj({"n": STR}), _obj({"n": {"type": ["string", "null"]}})) == []
    assert contract.narrowing(_obj({"n": {}}), _obj({"n": STR})) == ['n: type (any) became "string"']


def test_nested_objects_and_enums_are_compared() -> None:
    """A nested object's new required property and an enum losing values both narrow."""
    old = _obj({"opts": _obj({"a": STR, "mode": {"enum": ["x", "y"]}})})
    new = _obj({"opts": _obj({"a": STR, "mode": {"enum": ["x"]}}, ["a"])})
    assert contract.narrowing(old, new) == [
        "new required property 'opts.a'",
        'opts.mode: enum values removed ["y"]',
    ]


def test_widening_is_not_narrowing() -> None:
    """An optional property added and a requirement dropped accept more: nothing narrows."""
    old = _obj({"q": STR}, ["q"])
    new = _obj({"q": STR, "page": INT}, [])
    assert contract.narrowing(old, new) == []


def test_diff_lists_added_removed_and_changed_tools() -> None:
    """Each tool that differs is one Difference; only removals and narrowings are breaking."""
    old = Surface(tools=[_tool("a"), _tool("b", _obj({"q": STR})), _tool("c", description="x")])
    new = Surface(
        tools=[_tool("b", _obj({"q": STR}, ["q"])), _tool("c", description="y"), _tool("d")],
    )
    found = {d.name: d for d in contract.diff(old, new)}
    assert found["a"].change is Change.REMOVED and found["a"].breaking == ("removed",)
    assert found["b"].change is Change.CHANGED
    assert found["b"].breaking == ("inputSchema: new required property 'q'",)
    assert found["c"].details == ("description changed",) and not found["c"].breaking
    assert found["d"].change is Change.ADDED and not found["d"].breaking
    assert found["b"].render() == "tool b: changed — inputSchema: new required property 'q' (breaking)"


def test_output_schema_change_is_shown_not_breaking() -> None:
    """A changed outputSchema is a detail of the diff, not a breaking change."""
    old = Surface(tools=[_tool("a", outputSchema={"type": "object"})])
    new = Surface(tools=[_tool("a", outputSchema={"type": "string"})])
    (only,) = contract.diff(old, new)
    assert only.details == ("outputSchema changed",) and not only.breaking


def test_prompts_and_resources_are_compared_and_unknown_kinds_skipped() -> None:
    """A removed prompt breaks, a removed resource does not, a kind one side lacks is left out."""
    old = Surface(tools=[], prompts=[{"name": "p"}], resources=[{"uri": "file:///a"}])
    new = Surface(tools=[], prompts=[], resources=[])
    found = contract.diff(old, new)
    assert [(d.kind, d.name, bool(d.breaking)) for d in found] == [
        ("prompts", "p", True),
        ("resources", "file:///a", False),
    ]
    assert contract.diff(old, Surface(tools=[])) == []


def test_a_prompts_new_required_argument_breaks() -> None:
    """A prompt whose argument becomes required breaks its callers."""
    old = Surface(prompts=[{"name": "p", "arguments": [{"name": "x"}]}])
    new = Surface(prompts=[{"name": "p", "arguments": [{"name": "x", "required": True}]}])
    (only,) = contract.diff(old, new)
    assert only.breaking == ("new required argument 'x'",)


@pytest.mark.parametrize(
    ("old", "new", "major"),
    [
        ("1.2.3", "2.0.0", True),
        ("1.2.3", "1.3.0", False),
        ("0.2.1", "0.3.0", True),
        ("0.2.1", "0.2.2", False),
        ("2.0.0", "1.9.0", False),
        ("1.0.0", "2.0.0-rc.1", True),
    ],
)
def test_major_bump(old: str, new: str, major: bool) -> None:
    """A higher major is a major bump; below 1.0.0 a higher minor is too."""
    assert contract.is_major_bump(old, new) is major


def test_refusal_names_the_tool_and_what_broke() -> None:
    """A removed tool without a major bump is refused, naming the tool and the fix."""
    found = contract.diff(Surface(tools=[_tool("search")]), Surface(tools=[]))
    refused = contract.refusal(found, "srv", ("1.0.0", "1.1.0"), "enforce", "drop search")
    assert isinstance(refused, ContractBroken)
    assert "tool search: removed" in str(refused) and "2.0.0" in str(refused)


@pytest.mark.parametrize(
    ("versions", "mode", "message"),
    [
        (("1.0.0", "2.0.0"), "enforce", "drop search"),
        (("1.0.0", "1.1.0"), "warn", "drop search"),
        (("1.0.0", "1.1.0"), "enforce", "drop search [allow-breaking]"),
    ],
)
def test_refusal_is_lifted(versions: tuple[str, str], mode: str, message: str) -> None:
    """A major bump, contract: warn or [allow-breaking] lets a breaking change through."""
    found = contract.diff(Surface(tools=[_tool("search")]), Surface(tools=[]))
    assert contract.refusal(found, "srv", versions, mode, message) is None


def test_surface_round_trips_through_json() -> None:
    """The stored form reads back the same, a missing kind as None."""
    surface = Surface(tools=[_tool("a")], prompts=None, resources=[])
    assert Surface.from_json(surface.as_json()) == surface
    assert Surface.from_json({"tools": []}) == Surface(tools=[])


def test_removals_and_additions_render_on_one_line() -> None:
    """A removed tool reads `tool a: removed (breaking)`, an added one `tool b: added`."""
    found = contract.diff(Surface(tools=[_tool("a")]), Surface(tools=[_tool("b")]))
    assert sorted(d.render() for d in found) == ["tool a: removed (breaking)", "tool b: added"]


@pytest.mark.parametrize("name", [["x"], {"a": 1}, None, 3])
def test_a_prompt_argument_named_by_a_non_string_is_compared_not_crashed(name: object) -> None:
    """A candidate's prompt argument whose name is a list or object (its own answer, untrusted)
    is compared by its text: diff raised TypeError (unhashable) and failed the deploy as a bug."""
    old = Surface(prompts=[{"name": "p", "arguments": [{"name": name}]}])
    new = Surface(prompts=[{"name": "p", "arguments": [{"name": name, "required": True}]}])
    (only,) = contract.diff(old, new)
    assert only.breaking == (f"new required argument {str(name)!r}",)
    assert contract.diff(Surface(prompts=[{"name": "p"}]), new)[0].breaking


def test_long_enums_are_compared_in_linear_time() -> None:
    """Two releases' enums of 60,000 values each compare in well under a second (each old value was
    looked for in the new list: minutes for the lists a 4 MiB handshake holds, the deploy's thread
    busy all along)."""
    size = 60_000
    old = {"enum": list(range(size))}
    new = {"enum": list(range(size, 2 * size))}
    started = time.monotonic()
    (found,) = contract.narrowing(old, new)
    assert time.monotonic() - started < 5.0
    assert found.startswith("input: enum values removed [0, 1, 2")


def test_enum_values_are_equal_as_json_values_are() -> None:
    """true and 1 are different JSON values (Python's == says equal); 1 and 1.0 are the same number."""
    assert contract.narrowing({"enum": [True, 1.0, {"a": [1]}]}, {"enum": [1, {"a": [1]}]}) == [
        "input: enum values removed [true]"
    ]
