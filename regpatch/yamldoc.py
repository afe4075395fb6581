"""YAML read strictly: a key given twice in one mapping is refused, naming where.

PyYAML keeps the last of two equal keys; Go's YAML readers differ by version (yaml.v3
refuses, yaml.v2 keeps one). Either way the file means two things to two readers, and a
second ``trust_keys: []`` in an inventory would silently switch a check off. Every YAML
file regpatch reads (the inventory, a registry's config.yml) goes through ``load_yaml``.
"""

from __future__ import annotations

from typing import Any, Optional

import yaml


class DuplicateKey(ValueError):
    """A mapping of the document holds the same key twice; the message says where."""


def _where(path: list[str]) -> str:
    return "".join(path) or "the top level"


def _label(node: yaml.MappingNode) -> Optional[str]:
    """The ``name:`` of a mapping, to name an entry of a list by what the reader wrote."""
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == "name" and isinstance(v, yaml.ScalarNode):
            return v.value
    return None


def _check(node: yaml.Node, path: list[str], seen_nodes: set[int], depth: int = 0) -> None:
    if id(node) in seen_nodes:  # an alias of a node already checked (no exponential walk)
        return
    seen_nodes.add(id(node))
    if depth > 64:
        raise DuplicateKey(f"{_where(path)}: nested more than 64 levels deep")
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            label = _label(item) if isinstance(item, yaml.MappingNode) else None
            _check(item, path + [f"[{i}]" + (f" ({label!r})" if label else "")], seen_nodes, depth + 1)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else repr(key)
            line = key.start_mark.line + 1
            if name in seen:
                raise DuplicateKey(f"{_where(path)}: key {name!r} is given twice (lines {seen[name]} and {line}); "
                                   "a reader would take either: keep one")
            seen[name] = line
            _check(value, path + [("." if path else "") + str(name)], seen_nodes, depth + 1)


def load_yaml(text: str) -> Any:
    """The document of ``text`` (safe types only); ``DuplicateKey`` for a key given twice,
    ``yaml.YAMLError`` for what is not YAML."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return None
    _check(node, [], set())
    return yaml.safe_load(text)
