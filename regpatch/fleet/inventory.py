"""The rollout inventory: which registries a bundle goes to, and where each is patched.

    registries:
      - name: site-a                    # unique
        storage: /srv/registry/data     # the registry's rootdirectory
        url: http://127.0.0.1:5000      # for the verification pull
        restart: none                   # any --restart SPEC of the patch command
        group: canary                   # optional; waves run in the order groups first appear
        work_pool: site-a-pool          # optional; where the patch must run

The file is validated with pydantic before anything is touched; every problem
is reported at once, naming the entry (by its name when it has one, and its
position) and the field. Unknown fields are refused (a typo such as
``stroage:`` would otherwise silently drop the storage).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from regpatch.errors import UsageError
from regpatch.options import REGISTRY, TRUST, inventory_namer, opt, wording
from regpatch.params import (
    RegistryParams,
    TrustParams,
    VerifyCommand,
    VerifyParams,
    _one_line,
    refuse_inline_credentials,
    spec,
)
from regpatch.yamldoc import DuplicateKey, load_yaml

DEFAULT_GROUP = "default"


class InventoryError(UsageError):
    """The inventory file is missing, not YAML, or fails validation (exit 2)."""

    def __init__(self, path: Any, problems: list[str]):
        self.path, self.problems = str(path), list(problems)
        super().__init__(f"inventory {self.path} is invalid: " + "; ".join(self.problems))


class RegistryEntry(RegistryParams):
    """One registry of the fleet: a ``RegistryParams`` (the same fields, validation and
    descriptions as the patch's options; ``url`` is the inventory's name for
    ``registry_url``) with a required name and the fleet's own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Inventory entry", json_schema_extra=None)

    name: str = Field(min_length=1, description="unique name of the registry (letters, digits, '.', '_', '-')")
    storage: str = spec(REGISTRY["storage"], required=True, min_length=1)
    group: Optional[str] = Field(None, description="wave name; waves run in the order groups first appear")
    work_pool: Optional[str] = Field(None, description="Prefect work pool of the host that owns the disk")
    verify_command: VerifyCommand = None
    trust_keys: list[str] = spec(TRUST["trust_keys"])
    allow_unsigned: bool = spec(TRUST["allow_unsigned"])

    @field_validator("group", "work_pool")
    @classmethod
    def _non_empty(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.strip():
            raise ValueError("must not be empty (leave the field out instead)")
        return _one_line(v)

    @model_validator(mode="after")
    def _entry_rules(self) -> "RegistryEntry":
        if self.allow_unsigned and not self.trust_keys:
            raise ValueError("allow_unsigned only relaxes trust_keys: give trust_keys too, or leave both out")
        if self.restart.strip().lower().startswith("process:") and "config=" not in self.restart \
                and not self.registry_config:
            raise ValueError("restart 'process:' needs config=PATH or the entry's registry_config")
        return self

    @property
    def url(self) -> Optional[str]:
        return self.registry_url

    def registry_params(self) -> RegistryParams:
        """This registry as the engine's ``RegistryParams`` (named, without the fleet's fields)."""
        return RegistryParams.model_validate(self.model_dump(include=set(RegistryParams.model_fields)))

    def verify_params(self, default_command: Optional[str] = None) -> VerifyParams:
        return VerifyParams(command=self.verify_command or default_command)

    def trust_params(self) -> TrustParams:
        """This registry's bundle trust as the engine's ``TrustParams``."""
        return TrustParams(trust_keys=list(self.trust_keys), allow_unsigned=self.allow_unsigned)

    @property
    def wave(self) -> str:
        return self.group or DEFAULT_GROUP

    @property
    def where(self) -> str:
        return f"pool {self.work_pool}" if self.work_pool else "local"


def refuse_stored_credentials(entries: list[RegistryEntry], where: str = "inventory entry") -> None:
    """Values a Prefect run, deployment or block would store (in its database) carry no
    credential: every text of every entry (a path, a URL, a command, a key's path)."""
    for e in entries:
        with wording(inventory_namer(e.name)):
            for field, info in type(e).model_fields.items():
                value = getattr(e, field)
                for text in value if isinstance(value, list) else [value]:
                    if isinstance(text, str):
                        written = info.validation_alias.choices[-1] if isinstance(
                            info.validation_alias, AliasChoices) else field
                        refuse_inline_credentials(f"{written!r} of {where} {e.name}", text)


class Inventory(BaseModel):
    """The whole file: ``registries:``, a non-empty list of unique names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registries: list[RegistryEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "Inventory":
        seen: dict[str, int] = {}
        storages: dict[tuple, int] = {}
        for i, entry in enumerate(self.registries):
            if entry.name in seen:
                raise ValueError(f"registries[{i}]: name {entry.name!r} is already used by "
                                 f"registries[{seen[entry.name]}]")
            seen[entry.name] = i
            if entry.work_pool or not entry.storage:
                continue  # a path on another host: the same path may be another registry there
            key = _storage_identity(entry.storage)
            if key in storages:
                j = storages[key]
                raise ValueError(f"registries[{i}]: storage {entry.storage!r} is the storage of "
                                 f"registries[{j}] ({self.registries[j].name!r}) too: one registry, one entry")
            storages[key] = i
        return self

    def select(self, only: Optional[list[str]] = None) -> list[RegistryEntry]:
        """The entries named in ``only`` (all when empty), in inventory order."""
        if not only:
            return list(self.registries)
        names = {e.name for e in self.registries}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise UsageError(f"{opt.only} names registries not in the inventory: {', '.join(unknown)}; "
                             f"known: {', '.join(e.name for e in self.registries)}")
        return [e for e in self.registries if e.name in set(only)]

    @staticmethod
    def waves(entries: list[RegistryEntry]) -> list[tuple[str, list[RegistryEntry]]]:
        """Entries grouped into waves, in the order their groups first appear."""
        order: dict[str, list[RegistryEntry]] = {}
        for e in entries:
            order.setdefault(e.wave, []).append(e)
        return list(order.items())


def _storage_identity(storage: str) -> tuple:
    """One storage under two paths (a symlink, a '//' prefix, a bind mount, '.' or a
    trailing '/') is one folder: compared by device and inode when the folder exists here,
    else by its normalised absolute path."""
    try:
        st = os.stat(storage)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.normpath(os.path.abspath(storage)))


def _describe(loc: tuple, raw: Any) -> str:
    """``registries[1] 'site-b': storage`` from a pydantic error location."""
    parts = list(loc)
    if len(parts) >= 2 and parts[0] == "registries" and isinstance(parts[1], int):
        i = parts[1]
        who = f"registries[{i}]"
        try:
            name = raw["registries"][i].get("name")
        except (KeyError, IndexError, TypeError, AttributeError):
            name = None
        if isinstance(name, str):
            who += f" ({name!r})"
        field = ".".join(str(p) for p in parts[2:])
        return f"{who}: {field}" if field else who
    return ".".join(str(p) for p in parts) or "(top level)"


def _message(err: Any) -> str:
    kind = err.get("type")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    msg = err.get("msg", "invalid")
    return msg[len("Value error, "):] if msg.startswith("Value error, ") else msg


def parse_inventory(data: Any, source: str = "<inventory>") -> Inventory:
    """Validate an already-loaded document; InventoryError lists every problem."""
    try:
        return Inventory.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = _describe(tuple(err.get("loc", ())), data)
            problems.append(f"{where}: {_message(err)}" if where != "(top level)" else _message(err))
        raise InventoryError(source, problems) from None


def require_inventory(path: str) -> None:
    """The inventory a run was given is a file on this host (the shipped rollout deployment names
    /etc/regpatch/inventory.yml): one sentence naming the parameter and what to set, otherwise."""
    if not Path(path).is_file():
        raise UsageError(f"{opt.inventory} is {path}, which does not exist on this host: set it to the path of "
                         "this host's inventory (create one from deployments/inventory.example.yml, "
                         "docs/fleet/inventory.md)")


def load_inventory(path: Any) -> Inventory:
    """Read and validate an inventory YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InventoryError(p, [f"cannot read it: {e.strerror or e}"]) from e
    try:
        data = load_yaml(text)
    except DuplicateKey as e:
        raise InventoryError(p, [str(e)]) from None
    except yaml.YAMLError as e:
        raise InventoryError(p, [f"not valid YAML: {' '.join(str(e).split())}"]) from None
    if not isinstance(data, dict):
        raise InventoryError(p, ["expected a mapping with a 'registries:' list at the top"])
    return parse_inventory(data, str(p))
