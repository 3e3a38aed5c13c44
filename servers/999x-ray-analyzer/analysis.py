"""File analysis: language, line and symbol statistics, complexity, summary (no MCP imports)."""

from __future__ import annotations

import ast
import contextlib
import http.client
import json
import logging
import os
import re
import urllib.request
from pathlib import PurePosixPath
from typing import Any

log = logging.getLogger(__name__)

EXTENSIONS = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript",
    ".cjs": "javascript", ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript",
    ".go": "go", ".rs": "rust", ".java": "java", ".c": "c", ".h": "c", ".cc": "cpp",
    ".cpp": "cpp", ".hpp": "cpp", ".rb": "ruby", ".sh": "shell", ".bash": "shell",
    ".md": "markdown", ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml",
}  # fmt: skip
FILENAMES = {"dockerfile": "dockerfile", "makefile": "make"}
SHEBANGS = {"python": "python", "node": "javascript", "bash": "shell", "sh": "shell"}
CONTENT_HINTS = [  # first match wins, so the most specific patterns come first
    ("go", r"^package \w+\s*$"),
    ("rust", r"\bfn \w+\s*\(.*\)\s*(->|\{)|\blet mut\b|^use \w+(::\w+)+;"),
    ("java", r"\bpublic (final )?class \w+|\bSystem\.out\.print"),
    ("c", r"^#include\s*[<\"]"),
    ("python", r"^(def|class) \w+.*:\s*$|^(from \w+(\.\w+)* )?import \w+"),
    ("typescript", r"^(export )?(interface|type) \w+|:\s*(string|number|boolean)\b"),
    ("javascript", r"\bfunction\b|\bconst \w+\s*=|=>|\brequire\("),
]
HASH = ("#", None)
SLASH = ("//", ("/*", "*/"))
COMMENTS: dict[str, tuple[str | None, tuple[str, str] | None]] = {
    "python": HASH, "ruby": HASH, "shell": HASH, "yaml": HASH, "toml": HASH, "dockerfile": HASH,
    "make": HASH, "javascript": SLASH, "typescript": SLASH, "go": SLASH, "rust": SLASH,
    "java": SLASH, "c": SLASH, "cpp": SLASH,
}  # fmt: skip
JS_LIKE = {
    "functions": [
        r"\bfunction\s*\*?\s*(\w+)\s*\(",
        r"\b(?:const|let|var)\s+(\w+)\s*=\s*(?:async\s+)?(?:function\b|\([^)]*\)\s*=>|\w+\s*=>)",
    ],
    "classes": [r"\bclass\s+(\w+)", r"\binterface\s+(\w+)"],
    "imports": [
        r"\bimport\s+(?:[^'\"]*?\sfrom\s+)?['\"]([^'\"]+)['\"]",
        r"\brequire\(\s*['\"]([^'\"]+)",
    ],
}
C_FUNC = r"^[A-Za-z_][\w\s\*]*?\b(\w+)\s*\([^;{}]*\)\s*(?:const\s*)?\{"
SYMBOL_PATTERNS: dict[str, dict[str, list[str]]] = {
    "javascript": JS_LIKE,
    "typescript": JS_LIKE,
    "go": {
        "functions": [r"^func\s+(?:\([^)]*\)\s*)?(\w+)"],
        "classes": [r"^type\s+(\w+)\s+(?:struct|interface)\b"],
        "imports": [r"^import\s+(?:[\w.]+\s+)?\"([^\"]+)\""],
    },
    "rust": {
        "functions": [r"\bfn\s+(\w+)"],
        "classes": [r"\b(?:struct|enum|trait)\s+(\w+)"],
        "imports": [r"^\s*use\s+([\w:]+)"],
    },
    "java": {
        "functions": [
            r"^\s+(?:(?:public|protected|private|static|final|abstract|synchronized)\s+)*"
            r"[\w<>\[\],.? ]+\s+(\w+)\s*\([^;]*\)\s*(?:throws [\w., ]+)?\{"
        ],
        "classes": [r"\b(?:class|interface|enum|record)\s+(\w+)"],
        "imports": [r"^import\s+(?:static\s+)?([\w.*]+);"],
    },
    "c": {
        "functions": [C_FUNC],
        "classes": [r"\b(?:struct|union|enum)\s+(\w+)\s*\{"],
        "imports": [r"^#include\s*[<\"]([^>\"]+)"],
    },
}
SYMBOL_PATTERNS["cpp"] = {**SYMBOL_PATTERNS["c"], "classes": [r"\b(?:class|struct)\s+(\w+)\s*[:{]"]}
GO_IMPORT_BLOCK = re.compile(r"^import\s*\(([^)]*)\)", re.M)
KEYWORDS = {"if", "for", "while", "switch", "catch", "return", "sizeof", "else", "new"}
BRANCH = re.compile(r"\b(?:if|for|while|case|catch|elif|except)\b|&&|\|\|")
PY_BRANCHES = (
    ast.If, ast.For, ast.AsyncFor, ast.While, ast.IfExp, ast.ExceptHandler, ast.Assert,
    ast.comprehension, ast.match_case,
)  # fmt: skip
FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def detect_language(filename: str, content: str = "") -> dict[str, str]:
    """Guess a language from the file name, then the shebang, then content patterns."""
    path = PurePosixPath(filename.replace("\\", "/"))
    if path.suffix.lower() in EXTENSIONS:
        return {"language": EXTENSIONS[path.suffix.lower()], "method": "extension"}
    if path.name.lower() in FILENAMES:
        return {"language": FILENAMES[path.name.lower()], "method": "filename"}
    first = content.lstrip().split("\n", 1)[0]
    if first.startswith("#!"):
        words = re.split(r"[\s/]+", first[2:])
        for word in reversed([w for w in words if w and w != "env"]):
            name = re.sub(r"[\d.]+$", "", word)
            if name in SHEBANGS:
                return {"language": SHEBANGS[name], "method": "shebang"}
    for language, pattern in CONTENT_HINTS:
        if re.search(pattern, content, re.MULTILINE):
            return {"language": language, "method": "content"}
    return {"language": "unknown", "method": "none"}


def _classify(content: str, language: str) -> list[str]:
    """Label each line 'code', 'blank' or 'comment' for the language's comment syntax."""
    line_prefix, block = COMMENTS.get(language, (None, None))
    labels: list[str] = []
    in_block = False
    for raw in content.splitlines():
        line = raw.strip()
        if in_block:
            labels.append("comment")
            in_block = block is not None and block[1] not in line
        elif not line:
            labels.append("blank")
        elif line_prefix and line.startswith(line_prefix) and not line.startswith("#!"):
            labels.append("comment")
        elif block and line.startswith(block[0]):
            labels.append("comment")
            in_block = block[1] not in line[len(block[0]) :]
        else:
            labels.append("code")
    return labels


def line_stats(content: str, filename: str = "") -> dict[str, Any]:
    """Count total, code, blank and comment lines (Python docstrings count as code)."""
    language = detect_language(filename, content)["language"]
    labels = _classify(content, language)
    counts = {kind: labels.count(kind) for kind in ("code", "blank", "comment")}
    ratio = round(counts["comment"] / max(1, counts["code"] + counts["comment"]), 3)
    return {"language": language, "total": len(labels), **counts, "comment_ratio": ratio}


def _python_symbols(tree: ast.Module) -> dict[str, list[str]]:
    """Collect functions (qualified for methods), classes and imported modules from an AST."""
    found: dict[str, list[str]] = {"functions": [], "classes": [], "imports": []}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, FUNCS):
                found["functions"].append(prefix + child.name)
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                found["classes"].append(prefix + child.name)
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.Import):
                found["imports"].extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found["imports"].append("." * child.level + (child.module or ""))
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _regex_symbols(content: str, language: str) -> dict[str, list[str]]:
    """Find symbols with per-language regexes over code lines only."""
    labels = _classify(content, language)
    code = "\n".join(
        line if label == "code" else "" for line, label in zip(content.splitlines(), labels, strict=True)
    )
    if language == "go":  # one `import "x"` line per entry of an `import ( ... )` block
        code = GO_IMPORT_BLOCK.sub(lambda m: re.sub(r"(?m)^\s*", "import ", m[1].strip()), code)
    patterns = SYMBOL_PATTERNS.get(language, {})
    found: dict[str, list[str]] = {}
    for kind in ("functions", "classes", "imports"):
        names = [m.group(1) for p in patterns.get(kind, []) for m in re.finditer(p, code, re.M)]
        found[kind] = list(dict.fromkeys(n for n in names if n not in KEYWORDS))
    return found


def symbol_stats(filename: str, content: str) -> dict[str, Any]:
    """List functions, classes and imports: ast for Python, regex heuristics otherwise."""
    language = detect_language(filename, content)["language"]
    parser, note = "regex", None
    if language == "python":
        try:
            found, parser = _python_symbols(ast.parse(content)), "ast"
        except SyntaxError as exc:
            found, note = _regex_symbols(content, language), f"syntax error line {exc.lineno}"
    else:
        found = _regex_symbols(content, language)
    counts = {kind: len(names) for kind, names in found.items()}
    return {"language": language, "parser": parser, "note": note, "counts": counts, **found}


def _python_complexity(tree: ast.Module) -> list[dict[str, Any]]:
    """Cyclomatic complexity per function (nested functions scored on their own)."""
    scores: list[dict[str, Any]] = []

    def branches(node: ast.AST) -> int:
        total = 0
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (*FUNCS, ast.ClassDef, ast.Lambda)):
                continue
            total += isinstance(child, PY_BRANCHES) + len(getattr(child, "ifs", []))
            if isinstance(child, ast.BoolOp):
                total += len(child.values) - 1
            total += branches(child)
        return total

    for node in ast.walk(tree):
        if isinstance(node, FUNCS):
            complexity = 1 + branches(node)
            scores.append({"name": node.name, "line": node.lineno, "complexity": complexity})
    return scores


def _rating(worst: float) -> str:
    """Name the band a worst-function complexity falls in."""
    bands = ((5, "simple"), (10, "moderate"), (20, "complex"))
    return next((name for limit, name in bands if worst <= limit), "very complex")


def complexity_score(filename: str, content: str) -> dict[str, Any]:
    """Cyclomatic-style complexity with a 0-100 score (higher is simpler) and a rating."""
    language = detect_language(filename, content)["language"]
    method, functions = "heuristic", []
    if language == "python":
        with contextlib.suppress(SyntaxError):
            functions, method = _python_complexity(ast.parse(content)), "ast"
    if method == "ast":
        decisions = sum(f["complexity"] - 1 for f in functions)
        worst = max((f["complexity"] for f in functions), default=1)
        average = decisions / len(functions) + 1 if functions else 1.0
    else:
        labels = _classify(content, language)
        code = [ln for ln, lab in zip(content.splitlines(), labels, strict=True) if lab == "code"]
        decisions = sum(len(BRANCH.findall(line)) for line in code)
        count = max(1, len(symbol_stats(filename, content)["functions"]))
        worst = average = 1 + decisions / count
    score = max(0, min(100, round(100 - 3 * (worst - 1) - 2 * (average - 1))))
    functions.sort(key=lambda f: -f["complexity"])
    return {
        "language": language, "method": method, "decision_points": decisions,
        "average": round(average, 2), "worst": round(worst, 2), "score": score,
        "rating": _rating(worst), "functions": functions,
    }  # fmt: skip


def _names(items: list[str], limit: int = 6) -> str:
    """Join up to `limit` names, noting how many were left out."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def heuristic_summary(filename: str, content: str) -> str:
    """Describe a file in a few sentences from the other tools' results."""
    lines, symbols = line_stats(content, filename), symbol_stats(filename, content)
    cx = complexity_score(filename, content)
    parts = [
        f"{filename} is a {lines['language']} file with {lines['total']} lines "
        f"({lines['code']} code, {lines['comment']} comment, {lines['blank']} blank)."
    ]
    if lines["language"] == "python" and symbols["parser"] == "ast":
        doc = ast.get_docstring(ast.parse(content))
        if doc:
            parts.append(f"Module docstring: {doc.strip().splitlines()[0]}")
    for kind in ("classes", "functions", "imports"):
        if symbols[kind]:
            parts.append(f"{kind.capitalize()} ({len(symbols[kind])}): {_names(symbols[kind])}.")
    top = cx["functions"][0] if cx["functions"] else None
    hotspot = f"; most complex: {top['name']} ({top['complexity']})" if top else ""
    parts.append(f"Complexity is {cx['rating']} (score {cx['score']}/100{hotspot}).")
    return " ".join(parts)


def ollama_summary(url: str, model: str, filename: str, content: str, timeout: float = 30) -> str:
    """Ask an Ollama server for a short summary of the file."""
    prompt = (
        "Summarize this source file in 3-5 sentences: its purpose, main components and notable "
        f"risks.\nFile: {filename}\n\n{content[:12000]}"
    )
    body = json.dumps({"model": model, "prompt": prompt, "stream": False}).encode()
    request = urllib.request.Request(
        f"{url.rstrip('/')}/api/generate", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = json.load(response)
    text = str(payload.get("response") or "").strip() if isinstance(payload, dict) else ""
    if not text:
        raise ValueError("empty response from Ollama")
    return text


def summarize(filename: str, content: str) -> dict[str, Any]:
    """Summarize with Ollama when OLLAMA_URL is set, else (or on error) heuristically."""
    url, model = os.environ.get("OLLAMA_URL"), os.environ.get("OLLAMA_MODEL", "llama3.2")
    fallback = None
    if url:
        try:
            summary = ollama_summary(url, model, filename, content)
            return {"engine": f"ollama:{model}", "summary": summary, "fallback_reason": None}
        except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
            log.warning("Ollama summary failed, using heuristic: %s", exc)
            fallback = f"ollama failed: {exc}"
    summary = heuristic_summary(filename, content)
    return {"engine": "heuristic", "summary": summary, "fallback_reason": fallback}
