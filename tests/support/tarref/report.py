"""The closing note's table: every construction, Go's reading, regpatch's former reading
(``git show REF:regpatch/bundle/tarstream.py`` and ``archive.py``) and its reading now.

    .venv/bin/python tests/support/tarref/report.py [REF]      # REF defaults to main

Each reading is what a bundle archive offers once read (name=content, content
A, B or a byte count), or the refusal (regpatch) / error (Go). Go's column is
the extracted tree as containers/storage makes it (what skopeo's oci-archive:
reads). Verdict: "agree" (same files), "refused" (regpatch refuses), or
"DIFFERS" (regpatch reads something else than Go: a bug).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from regpatch.bundle import archive as new_archive  # noqa: E402
from regpatch.errors import BundleError  # noqa: E402
from regpatch.sanitize import escape_controls  # noqa: E402
from support.tarref.build import build  # noqa: E402
from support.tarref.constructions import A, B, constructions  # noqa: E402


def _load(name: str, source: str, folder: Path):
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"regpatch.bundle.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def old_archive_module(ref: str, folder: Path):
    """regpatch's archive.py and tarstream.py as they are at ``ref``."""
    show = lambda p: subprocess.run(["git", "show", f"{ref}:{p}"], cwd=REPO, check=True,  # noqa: E731
                                    capture_output=True, text=True).stdout
    _load("_old_tarstream", show("regpatch/bundle/tarstream.py"), folder)
    archive = show("regpatch/bundle/archive.py").replace("from .tarstream import", "from ._old_tarstream import")
    return _load("_old_archive", archive, folder)


def label(data: bytes) -> str:
    return "A" if data == A else "B" if data == B else f"{len(data)}B"


def short(name: str) -> str:
    name = escape_controls(name)
    return name if len(name) <= 24 else name[:10] + "…" + name[-10:]


def regpatch_files(archive_module, path: Path) -> tuple[str, dict]:
    try:
        src = archive_module.open_archive(archive_module.LocalArchiveFile(path))
        files = {n: src.read_bytes(n, 1 << 20) for n in src.list()}
    except BundleError as e:
        return f"refused ({type(e).__name__})", {}
    except Exception as e:  # the former reader's tracebacks
        return f"crash ({type(e).__name__})", {}
    return ", ".join(f"{short(n)}={label(d)}" for n, d in files.items()) or "(no files)", files


def _untar_error(text: str) -> str:
    """containers/storage's error without the scratch folder's path."""
    if "unhandled tar header type" in text or "breakout" in text:
        return text.split(":")[0] if "breakout" in text else text
    return text.rsplit(": ", 1)[-1]


def go_files(binary: Path, path: Path) -> tuple[str, dict]:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([str(binary), "extract", str(path), out], capture_output=True, text=True)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    for line in lines:
        if "error" in line and "path" not in line:
            return f"error: {line['error'].replace('archive/tar: ', '')}", {}
        if "untar_error" in line:
            return f"skopeo fails: {_untar_error(line['untar_error'])}", {}
    files = {line["path"]: line["sha256"] for line in lines if "sha256" in line}
    known = {hashlib.sha256(x).hexdigest(): label(x) for x in (A, B)}
    labels = [f"{short(line['path'])}={known.get(line['sha256'], '?')}" for line in lines if "sha256" in line]
    if len(labels) > 6:
        return f"{len(labels)} files: " + ", ".join(labels[:3]) + ", …", files
    return ", ".join(labels) or "(no files)", files


def main(ref: str = "main") -> None:
    binary = build()
    with tempfile.TemporaryDirectory() as tmp:
        old_archive = old_archive_module(ref, Path(tmp))
        print("| construction | Go 1.19 (as skopeo extracts it) | regpatch before | verdict before "
              "| regpatch now | verdict now |")
        print("|---|---|---|---|---|---|")
        for c in constructions():
            path = Path(tmp) / f"{c.name}.tar"
            path.write_bytes(c.data)
            go_text, go = go_files(binary, path)
            row = [c.name, go_text]
            for module in (old_archive, new_archive):
                text, files = regpatch_files(module, path)
                hashed = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
                verdict = ("refused" if text.startswith("refused") else "TRACEBACK" if text.startswith("crash") else
                           "agree" if hashed == go and not go_text.startswith(("error", "skopeo")) else "DIFFERS")
                row += [text, verdict]
            print("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
