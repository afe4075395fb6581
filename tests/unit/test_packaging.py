"""What the distribution ships: every package of the source tree, flows and tasks under
project-owned names, and nothing of the test kit."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_of_the_tree_is_shipped_and_nothing_else():
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "regpatch").rglob("__init__.py")}
    assert listed - {"regpatch_flows", "regpatch_tasks"} == found
    assert tool["package-dir"] == {"regpatch_flows": "flows", "regpatch_tasks": "tasks"}


def test_flows_and_tasks_install_under_their_own_names():
    import regpatch_flows.entry
    import regpatch_tasks

    assert Path(regpatch_flows.entry.__file__).parent == ROOT / "flows"
    assert Path(regpatch_tasks.__file__).parent == ROOT / "tasks"


def test_the_shipped_deployments_name_installed_flows_by_module_path():
    import yaml

    doc = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    for d in doc["deployments"]:
        module, _, name = d["entrypoint"].rpartition(".")
        assert module.startswith("regpatch_flows."), d["entrypoint"]
        assert (ROOT / "flows" / (module.split(".", 1)[1] + ".py")).is_file()
        assert f"def {name}(" in (ROOT / "flows" / (module.split(".", 1)[1] + ".py")).read_text()
        assert d.get("pull") == []
