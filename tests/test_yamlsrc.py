"""pipeline/config/yamlsrc.py: safe YAML reading that locates every value and refuses hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import yamlsrc
from pipeline.errors import ConfigError, Problem


def _refused(raw: bytes) -> Problem:
    """Parse `raw`, expect exactly one problem, and return it."""
    with pytest.raises(ConfigError) as caught:
        yamlsrc.parse(raw, "f.yaml")
    assert len(caught.value.problems) == 1
    return caught.value.problems[0]


def _billion_laughs() -> bytes:
    """The classic bomb: nine levels of nine aliases each, 9**9 strings once expanded."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        refs = ",".join([f"*{prev}"] * 9)
        lines.append(f"{name}: &{name} [{refs}]")
    return ("\n".join(lines) + "\n").encode()


NESTED = b"""# a comment
name: x
run:
  port: 8080
  env: {A: 1}
list:
  - a
  - b: 2
"""


def test_values_are_located_by_json_path() -> None:
    """Every value's 1-based (line, column) is kept under its JSON path, lists included."""
    doc = yamlsrc.parse(NESTED, "f.yaml")
    assert doc.data == {"name": "x", "run": {"port": 8080, "env": {"A": 1}}, "list": ["a", {"b": 2}]}
    assert doc.positions[("name",)] == (2, 7)
    assert doc.positions[("run", "port")] == (4, 9)
    assert doc.positions[("run", "env", "A")] == (5, 12)
    assert doc.positions[("list", 1, "b")] == (8, 8)


def test_keys_are_located_separately_from_values() -> None:
    """A key's own position is kept so that an unknown key can be pointed at directly."""
    doc = yamlsrc.parse(NESTED, "f.yaml")
    assert doc.where(("run", "port"), key=True) == (4, 3)
    assert doc.where(("run", "port")) == (4, 9)


def test_where_falls_back_to_the_nearest_known_parent() -> None:
    """A path that is absent (a missing key) is located at its closest existing ancestor."""
    doc = yamlsrc.parse(NESTED, "f.yaml")
    assert doc.where(("run", "missing")) == (4, 3)
    assert doc.where(("nowhere", "at", "all")) == (2, 1)


def test_problem_carries_file_position_and_rendered_path() -> None:
    """Document.problem builds a Problem with this file's name, the position and `$.a[0]` path."""
    doc = yamlsrc.parse(NESTED, "servers/x/mcp-server.yaml")
    problem = doc.problem(("list", 1, "b"), "bad", "fix it")
    assert problem == Problem("servers/x/mcp-server.yaml", 8, 8, "$.list[1].b", "bad", "fix it")


def test_json_path_renders_keys_and_indices() -> None:
    """Keys render as `.key`, list indices as `[i]`, and the root as `$`."""
    assert yamlsrc.json_path(()) == "$"
    assert yamlsrc.json_path(("run", "secrets", 2)) == "$.run.secrets[2]"


def test_non_utf8_byte_is_named_with_its_line_and_column() -> None:
    """A Latin-1 byte is refused with the line and column where it sits and its hex value."""
    problem = _refused(b"a: 1\nb: caf\xe9\n")
    assert (problem.line, problem.column) == (2, 7)
    assert "0xe9" in problem.message
    assert "UTF-8" in problem.hint


def test_empty_file_is_refused() -> None:
    """A zero-byte file is reported as empty rather than parsed as null."""
    problem = _refused(b"")
    assert problem.message == "file is empty"


def test_whitespace_only_file_is_refused_as_empty() -> None:
    """Spaces, tabs and newlines alone count as an empty file."""
    problem = _refused(b"  \n\t\n\n")
    assert problem.message == "file is empty"


def test_comment_only_file_holds_no_document() -> None:
    """A file with only comments is refused as holding no YAML document."""
    problem = _refused(b"# nothing here\n")
    assert "no YAML document" in problem.message


def test_billion_laughs_is_refused_as_an_expansion() -> None:
    """Nested aliases that would expand to 9**9 values stop at the node budget with a named cause."""
    problem = _refused(_billion_laughs())
    assert "expands past" in problem.message
    assert "YAML bomb" in problem.message


def test_recursive_alias_is_refused() -> None:
    """An anchor that contains itself is stopped by the depth limit, not followed forever."""
    problem = _refused(b"a: &a [*a]\n")
    assert "expands past" in problem.message


def test_deeply_nested_flow_sequence_is_refused_as_config_error() -> None:
    """A 2 KB file of 1000 nested brackets is a ConfigError, not a RecursionError from the composer."""
    problem = _refused(b"[" * 1000 + b"]" * 1000)
    assert "levels" in problem.message


@pytest.mark.parametrize(
    "raw",
    [b"port: !!int abc\n", b"port: !!float abc\n", b"when: !!timestamp abc\n", b"!!int abc: 1\n"],
    ids=["int", "float", "timestamp", "int-key"],
)
def test_explicit_tag_with_unparsable_value_is_a_config_error(raw: bytes) -> None:
    """A scalar whose explicit tag cannot construct it is reported, not raised as ValueError."""
    problem = _refused(raw)
    assert problem.line == 1


def test_unsafe_python_tag_is_refused_with_its_location() -> None:
    """A `!!python/object` tag is never constructed; its value is located and reported."""
    problem = _refused(b"a: 1\nb: !!python/object:os.system x\n")
    assert (problem.line, problem.path) == (2, "$.b")
    assert "python/object" in problem.message


def test_oversized_file_is_refused_with_its_size(tmp_path: Path) -> None:
    """A 10 MB manifest is refused by size before it is read, naming the size and the limit."""
    big = tmp_path / "mcp-server.yaml"
    big.write_bytes(b"name: x\n" + b"#" * (10 * 1024 * 1024) + b"\n")
    with pytest.raises(ConfigError) as caught:
        yamlsrc.load(big, display="servers/x/mcp-server.yaml")
    [problem] = caught.value.problems
    assert problem.file == "servers/x/mcp-server.yaml"
    assert f"limit is {yamlsrc.MAX_FILE_BYTES}" in problem.message
    assert str(big.stat().st_size) in problem.message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """Reading a file that does not exist is a ConfigError that says it cannot be read."""
    with pytest.raises(ConfigError) as caught:
        yamlsrc.load(tmp_path / "absent.yaml")
    assert "cannot read file" in caught.value.problems[0].message


def test_load_reads_a_file_under_its_display_name(tmp_path: Path) -> None:
    """load parses the file and names the Document by the display name it was given."""
    path = tmp_path / "deploy.yaml"
    path.write_text("listen: {port: 8900}\n")
    doc = yamlsrc.load(path, display="deploy.yaml")
    assert (doc.file, doc.data) == ("deploy.yaml", {"listen": {"port": 8900}})


def test_duplicate_key_is_reported_at_its_second_occurrence() -> None:
    """A key written twice is refused at the repeat, which safe_load would silently keep."""
    problem = _refused(b"a: 1\nb: 2\na: 3\n")
    assert (problem.line, problem.column, problem.path) == (3, 1, "$.a")
    assert "duplicate key 'a'" in problem.message


def test_nested_duplicate_key_names_its_full_path() -> None:
    """A duplicate inside a nested mapping is reported with the nested JSON path."""
    problem = _refused(b"run:\n  port: 1\n  port: 2\n")
    assert (problem.line, problem.path) == (3, "$.run.port")


def test_merge_key_is_refused() -> None:
    """`<<: *anchor` is refused at the merge key instead of silently merging."""
    problem = _refused(b"base: &b {x: 1}\nrun:\n  <<: *b\n  y: 2\n")
    assert (problem.line, problem.column, problem.path) == (3, 3, "$.run")
    assert "merge keys" in problem.message


def test_malformed_yaml_reports_line_and_column() -> None:
    """An unclosed flow sequence is reported where the parser noticed it, as invalid YAML."""
    problem = _refused(b"a: 1\nb: [1, 2\nc: 3\n")
    assert (problem.line, problem.column) == (3, 2)
    assert problem.message.startswith("invalid YAML:")


def test_tab_indentation_is_reported_as_invalid_yaml() -> None:
    """A tab used for indentation is located on its line."""
    problem = _refused(b"a:\n\tb: 1\n")
    assert problem.line == 2
    assert "invalid YAML" in problem.message


@pytest.mark.parametrize(
    "raw, line",
    [(b"a: 1\n[x, y]: 2\n", 2), (b"a: 1\n? {x: 1}\n: 2\n", 2)],
    ids=["flow-sequence-key", "complex-mapping-key"],
)
def test_non_scalar_mapping_key_is_refused(raw: bytes, line: int) -> None:
    """A list or mapping used as a key is refused on its line, asking for a plain key."""
    problem = _refused(raw)
    assert problem.line == line
    assert "plain value" in problem.message
