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
import re
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from regpatch.errors import UsageError
from regpatch.registry.restart import parse_restart_spec

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)
URL_RE = re.compile(r"(https?://)?[^\s/]+(/\S*)?")
# control characters (C0, DEL, C1, line/paragraph separators): never part of a path or name
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
DEFAULT_GROUP = "default"


class InventoryError(UsageError):
    """The inventory file is missing, not YAML, or fails validation (exit 2)."""

    def __init__(self, path: Any, problems: list[str]):
        self.path, self.problems = str(path), list(problems)
        super().__init__(f"inventory {self.path} is invalid: " + "; ".join(self.problems))


class RegistryEntry(BaseModel):
    """One registry of the fleet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="unique name of the registry (letters, digits, '.', '_', '-')")
    storage: str = Field(description="the registry's rootdirectory (holds docker/registry/v2)")
    url: Optional[str] = Field(None, description="registry API URL for the verification pull")
    restart: str = Field("none", description="restart spec: none | command:<cmd> | process:pidfile=PATH,...")
    group: Optional[str] = Field(None, description="wave name; waves run in the order groups first appear")
    work_pool: Optional[str] = Field(None, description="Prefect work pool of the host that owns the disk")
    registry_config: Optional[str] = Field(None, description="the registry's config.yml on its host")
    registry_auth_file: Optional[str] = Field(None, description="docker config.json with credentials")
    registry_ca: Optional[str] = Field(None, description="CA bundle for the registry's TLS certificate")
    insecure: bool = Field(False, description="allow plain HTTP / skip TLS verification")
    verify_command: Optional[str] = Field(None, description="external puller, {ref} replaced")
    trust_keys: list[str] = Field(default_factory=list,
                                  description="PEM public keys on the registry's host; the bundle must be "
                                              "signed by one of them (patch --trust-key)")
    allow_unsigned: bool = Field(False, description="with trust_keys: accept an unsigned bundle")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("storage", "url", "registry_config", "registry_auth_file", "registry_ca", "group",
                     "work_pool", "restart")
    @classmethod
    def _one_line(cls, v: Optional[str]) -> Optional[str]:
        # the whole value is used as given: a trailing newline or a control character is a
        # typo that would name another file (or a forged log line), never trimmed silently
        if v is not None and _CONTROL.search(v):
            raise ValueError(f"{v!r} contains a control character (newline, tab, NUL...)")
        if v is not None and v.strip() and v != v.strip():  # (all blank: "must not be empty")
            raise ValueError(f"{v!r} has leading or trailing spaces")
        return v

    @field_validator("verify_command")
    @classmethod
    def _command(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and "\x00" in v:
            raise ValueError("contains a NUL character")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not URL_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a registry URL (http://HOST:PORT or https://HOST:PORT)")
        return v

    @field_validator("group", "work_pool")
    @classmethod
    def _non_empty(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.strip():
            raise ValueError("must not be empty (leave the field out instead)")
        return v

    @field_validator("restart")
    @classmethod
    def _restart(cls, v: str) -> str:
        try:
            # syntax only: config= of process: may come from registry_config (checked in the
            # model validator), so a placeholder stands in; nothing is read
            placeholder = Path("config.yml") if v.strip().lower().startswith("process:") else None
            parse_restart_spec(v, registry_config=placeholder)
        except UsageError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("trust_keys")
    @classmethod
    def _trust_keys(cls, v: list[str]) -> list[str]:
        if any(not k.strip() for k in v):
            raise ValueError("a trust key path must not be empty")
        return v

    @model_validator(mode="after")
    def _allow_unsigned_needs_keys(self) -> "RegistryEntry":
        if self.allow_unsigned and not self.trust_keys:
            raise ValueError("allow_unsigned only relaxes trust_keys: give trust_keys too, or leave both out")
        return self

    @model_validator(mode="after")
    def _restart_needs_config(self) -> "RegistryEntry":
        if self.restart.strip().lower().startswith("process:") and "config=" not in self.restart \
                and not self.registry_config:
            raise ValueError("restart 'process:' needs config=PATH or the entry's registry_config")
        return self

    def registry_params(self):
        """This registry as the engine's ``RegistryParams``."""
        from regpatch.params import RegistryParams

        return RegistryParams(storage=self.storage, registry_config=self.registry_config, registry_url=self.url,
                              restart=self.restart, registry_auth_file=self.registry_auth_file,
                              registry_ca=self.registry_ca, insecure=self.insecure)

    def trust_params(self):
        """This registry's bundle trust as the engine's ``TrustParams``."""
        from regpatch.params import TrustParams

        return TrustParams(trust_keys=list(self.trust_keys), allow_unsigned=self.allow_unsigned)

    @property
    def wave(self) -> str:
        return self.group or DEFAULT_GROUP

    @property
    def where(self) -> str:
        return f"pool {self.work_pool}" if self.work_pool else "local"


class Inventory(BaseModel):
    """The whole file: ``registries:``, a non-empty list of unique names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registries: list[RegistryEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "Inventory":
        seen: dict[str, int] = {}
        storages: dict[str, int] = {}
        for i, entry in enumerate(self.registries):
            if entry.name in seen:
                raise ValueError(f"registries[{i}]: name {entry.name!r} is already used by "
                                 f"registries[{seen[entry.name]}]")
            seen[entry.name] = i
            if entry.work_pool or not entry.storage:
                continue  # a path on another host: the same path may be another registry there
            key = os.path.normpath(os.path.abspath(entry.storage))
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
            raise UsageError(f"--only names registries not in the inventory: {', '.join(unknown)}; "
                             f"known: {', '.join(e.name for e in self.registries)}")
        return [e for e in self.registries if e.name in set(only)]

    @staticmethod
    def waves(entries: list[RegistryEntry]) -> list[tuple[str, list[RegistryEntry]]]:
        """Entries grouped into waves, in the order their groups first appear."""
        order: dict[str, list[RegistryEntry]] = {}
        for e in entries:
            order.setdefault(e.wave, []).append(e)
        return list(order.items())


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


def _message(err: dict) -> str:
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


def load_inventory(path: Any) -> Inventory:
    """Read and validate an inventory YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InventoryError(p, [f"cannot read it: {e.strerror or e}"]) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InventoryError(p, [f"not valid YAML: {' '.join(str(e).split())}"]) from None
    if not isinstance(data, dict):
        raise InventoryError(p, ["expected a mapping with a 'registries:' list at the top"])
    return parse_inventory(data, str(p))
