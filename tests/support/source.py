"""Reading raygrade's own source in tests (the architecture and provider-registry checks)."""

import ast
from pathlib import Path

#: Tries of :func:`parse_source`: CPython 3.11's AST constructor keeps its recursion depth in
#: per-interpreter state, which another thread's parse can leave off by the time this one checks
#: it ("SystemError: AST constructor recursion depth mismatch", python/cpython#106905, fixed in
#: 3.12). It happened once in a pytest-xdist worker whose Ray threads were busy; the source itself
#: parses on the next try.
PARSE_TRIES = 3


def parse_source(path: Path) -> ast.Module:
    """``ast.parse`` of a file's text, tried again on CPython 3.11's spurious recursion-depth
    ``SystemError`` (see :data:`PARSE_TRIES`); a ``SyntaxError`` is raised at once.

    Raises:
        SyntaxError: The file does not parse.
        SystemError: The interpreter's error repeated :data:`PARSE_TRIES` times.
    """
    text = path.read_text()
    for attempt in range(PARSE_TRIES):
        try:
            return ast.parse(text, filename=str(path))
        except SystemError as e:
            if "recursion depth mismatch" not in str(e) or attempt == PARSE_TRIES - 1:
                raise
    raise AssertionError("unreachable")
