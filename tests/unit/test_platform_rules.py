"""The platform seam's rule (regpatch/platform/__init__.py): outside ``regpatch/platform`` no
module imports an OS-only module, calls a Unix-only name of ``os`` / ``signal`` (the names
Python 3.11's Windows stubs lack, read from mypy's typeshed), reads ``os.name`` or
``sys.platform``, opens, replaces or kills by hand, or starts a process itself. The seam's
Windows implementation and the modules it is built of name no Unix-only call either."""

from __future__ import annotations

import ast
from pathlib import Path

from support.apiset import unix_only

ROOT = Path(__file__).resolve().parents[2]
SEAM = ROOT / "regpatch" / "platform"
PACKAGES = (ROOT / "regpatch", ROOT / "flows", ROOT / "tasks")

OS_ONLY_MODULES = {"fcntl", "msvcrt", "ctypes", "winreg", "_winapi", "pwd", "grp", "termios", "resource", "posix",
                   "nt", "tty", "pty", "syslog", "_posixsubprocess",
                   "subprocess"}  # (children.run is the one runner)
# names that exist on both but are the seam's: the one switch, the one open (O_BINARY), the one
# replace (retries), and os.kill, which is TerminateProcess on Windows
SEAM_ONLY = {"os": {"name", "open", "replace", "rename", "kill"}, "sys": {"platform"}}
POSIX_KEYWORDS = {"start_new_session", "preexec_fn", "process_group", "creationflags"}


def _forbidden() -> dict[str, set[str]]:
    return {"os": set(unix_only("os")) | SEAM_ONLY["os"], "signal": set(unix_only("signal")),
            "sys": SEAM_ONLY["sys"]}


def _typing_only(tree: ast.Module) -> set[int]:
    """Lines under ``if TYPE_CHECKING:`` (names for mypy, nothing imported at run time)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _findings(path: Path, forbidden: dict[str, set[str]], modules: set[str], keywords: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    typing_only = _typing_only(tree)
    where = lambda node: f"{path.relative_to(ROOT)}:{node.lineno}"  # noqa: E731
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [f"{where(node)}: import {a.name}" for a in node.names if a.name.split(".")[0] in modules]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in modules:
                out.append(f"{where(node)}: from {node.module} import ...")
            out += [f"{where(node)}: from {top} import {a.name}" for a in node.names
                    if a.name in forbidden.get(node.module, set())]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in forbidden.get(node.value.id, set()):
                out.append(f"{where(node)}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.keyword) and node.arg in keywords:
            out.append(f"{where(node)}: {node.arg}=")
    return out


def test_the_unix_only_names_come_from_the_stubs():
    assert {"pread", "preadv", "copy_file_range", "posix_fadvise", "killpg", "getpgid", "setsid", "fchmod",
            "fchown", "chown", "getuid", "geteuid", "O_NOFOLLOW", "O_NONBLOCK", "mkfifo"} <= unix_only("os")
    assert {"SIGKILL", "SIGHUP", "SIGQUIT"} <= unix_only("signal")
    assert not {"replace", "open", "fsync", "lseek", "getpid"} & unix_only("os")


def test_nothing_outside_the_seam_calls_the_operating_system_directly():
    findings = []
    for package in PACKAGES:
        for path in sorted(package.rglob("*.py")):
            if SEAM in path.parents:
                continue
            findings += _findings(path, _forbidden(), OS_ONLY_MODULES, POSIX_KEYWORDS)
    assert not findings, "use regpatch.platform (the seam) instead:\n" + "\n".join(findings)


def test_the_windows_side_of_the_seam_names_no_unix_only_call():
    """What runs on Windows (the Windows implementation, the runner, the reader, the flag and
    the API module) reaches POSIX only through getattr with a default."""
    forbidden = {"os": set(unix_only("os")), "signal": set(unix_only("signal"))}
    findings = []
    for name in ("__init__.py", "_base.py", "_windows.py", "_win32.py", "children.py", "ownfiles.py", "stopflag.py"):
        findings += _findings(SEAM / name, forbidden, {"fcntl", "termios", "resource", "pwd", "grp", "posix"},
                              {"start_new_session", "preexec_fn", "process_group"})
    assert not findings, "\n".join(findings)


def test_only_the_native_module_holds_ctypes_and_msvcrt():
    holders = sorted(p.name for p in SEAM.glob("*.py")
                     if _findings(p, {}, {"ctypes", "msvcrt", "winreg", "_winapi"}, set()))
    assert holders == ["_posix.py", "_win32.py"]  # (_posix: libc's sync_file_range)
