"""The API set of a Python 3.11 on each platform, read from the stubs mypy checks against
(typeshed, inside the pinned mypy): ``unix_only("os")`` is every public name the stub
defines for Linux and not for Windows. The Windows-API test layer hides these names from
the project's modules (``support.winapi``); ``tests/unit/test_platform_rules.py`` refuses
them outside ``regpatch/platform``."""

from __future__ import annotations

import ast
import functools
import operator
from pathlib import Path

import mypy

STUBS = Path(mypy.__file__).parent / "typeshed" / "stdlib"
VERSION = (3, 11)

_OPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge}


def _value(node: ast.expr, platform: str):
    text = ast.unparse(node)
    if text == "sys.platform":
        return platform
    if text == "sys.version_info":
        return VERSION
    return ast.literal_eval(node)


def _holds(test: ast.expr, platform: str) -> bool:
    """A stub's ``if`` condition (sys.platform, sys.version_info, and/or/not) on ``platform``."""
    if isinstance(test, ast.BoolOp):
        values = [_holds(v, platform) for v in test.values]
        return all(values) if isinstance(test.op, ast.And) else any(values)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return not _holds(test.operand, platform)
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        return _OPS[type(test.ops[0])](_value(test.left, platform), _value(test.comparators[0], platform))
    if isinstance(test, ast.Call) and ast.unparse(test.func) == "sys.platform.startswith":
        return platform.startswith(ast.literal_eval(test.args[0]))
    raise ValueError(f"a stub condition this reader does not know: {ast.unparse(test)}")


def _names(body: list[ast.stmt], platform: str, out: set[str]) -> set[str]:
    for node in body:
        if isinstance(node, ast.If):
            _names(node.body if _holds(node.test, platform) else node.orelse, platform, out)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update(a.asname or a.name.split(".")[0] for a in node.names if a.name != "*")
    return out


@functools.cache
def names(module: str, platform: str) -> frozenset[str]:
    """The names ``module``'s stub defines on ``platform`` ("linux", "win32") for Python 3.11."""
    base = STUBS / module.replace(".", "/")
    path = base / "__init__.pyi" if base.is_dir() else base.with_suffix(".pyi")
    return frozenset(_names(ast.parse(path.read_text()).body, platform, set()))


@functools.cache
def unix_only(module: str) -> frozenset[str]:
    """Public names of ``module`` a Linux Python has and a Windows Python has not."""
    return frozenset(n for n in names(module, "linux") - names(module, "win32") if not n.startswith("_"))
