"""The code identity of a set of Python modules: a hash of what their code computes, not of how it is written
or where it lives.

Each module is parsed and printed again without its comments, docstrings (any statement that is a bare
string), layout and import statements (`import`, `from ... import`, `from __future__`, at any depth). Each
module's printed code is hashed alone and the sorted hashes are hashed together, so neither the modules'
order, nor their file paths, nor their module names count: moving a module into a subpackage (which
rewrites its relative imports) keeps its identity, and one changed operator changes it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from pathlib import Path
from typing import Iterable

_STATEMENT_LISTS = ("body", "orelse", "finalbody")  # the fields of an AST node that hold statements
_NEVER_EMPTY = ("body",)  # a block without statements does not parse: it keeps a `pass`


def _is_code(statement: ast.stmt) -> bool:
    """False for what does not compute: imports (they only name where code lives) and bare strings."""
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return False
    return not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str))


def _code_only(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        for field in _STATEMENT_LISTS:
            statements = getattr(node, field, None)
            if not isinstance(statements, list) or not all(isinstance(s, ast.stmt) for s in statements):
                continue  # e.g. a lambda's or an expression's `body` is one expression, not a block
            kept = [s for s in statements if _is_code(s)]
            if not kept and statements and field in _NEVER_EMPTY and not isinstance(node, ast.Module):
                kept = [ast.Pass()]
            setattr(node, field, kept)
    return tree


def normalised_code(source: str, filename: str = "<module>") -> str:
    """A module's code as it runs, printed again: comments, docstrings, layout and imports dropped."""
    return ast.unparse(_code_only(ast.parse(source, filename=filename)))


def module_file(module_name: str) -> Path:
    """The source file of a module, found without importing it (torch imports take seconds).

    Raises LookupError (with the reason) when there is none.
    """
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as error:
        raise LookupError(f"cannot find module {module_name!r} ({error})") from None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise LookupError(f"cannot find module {module_name!r} (is it on PYTHONPATH?)")
    return Path(spec.origin)


def _module_hash(path: Path) -> str:
    return hashlib.sha256(normalised_code(path.read_text(), str(path)).encode()).hexdigest()


def code_hash(module_names: Iterable[str]) -> str:
    """The code identity of these modules (16 hex digits); independent of their names, paths and order."""
    hashes = sorted(_module_hash(module_file(name)) for name in module_names)
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]
