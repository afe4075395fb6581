"""The parameter models of a registry, a verification, an S3 bundle, a bundle's trust
and a rollout: pydantic models whose fields come from the one table of options
(``regpatch.options``).

The flows take these models as parameters (the Prefect UI shows one group per model with
the fields' titles and descriptions, and the JSON schema refuses what the model refuses);
the command line validates its flags with them (``regpatch.cli.options.model_of``); the
inventory's entries are ``RegistryParams`` with the fleet's fields added
(``regpatch.fleet.inventory.RegistryEntry``). One validation: the validators here.

The models hold no secret: credentials are read where they are used (environment, auth
file, a Prefect block looked up inside the run). A value that carries a credential
inline (a password in a URL, a verify or a restart command) is refused wherever it would
be stored, before the run exists.
"""

from __future__ import annotations

import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from regpatch.errors import InvalidReference, UsageError
from regpatch.options import (
    CHANGE,
    FORM_GROUPS,
    MAINTENANCE,
    REGISTRY,
    RETENTION,
    ROLLOUT,
    S3,
    TRUST,
    VERIFY,
    Option,
    form_namer,
    opt,
    wording,
)
from regpatch.reference import REPOSITORY_PATTERN, TAG_PATTERN, Repository, Tag
from regpatch.sanitize import find_credentials, has_credentials

if TYPE_CHECKING:  # imported where they are used: the command line parses its flags first (fast start)
    from regpatch.bundle.s3 import S3Options  # boto3
    from regpatch.registry.target import RegistryTarget  # httpx

REGISTRY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)
URL_RE = re.compile(r"(https?://)?[^\s/]+(/\S*)?")
# control characters (C0, DEL, C1, line/paragraph separators): never part of a path, a name or a URL
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def spec(o: Option, *, required: bool = False, **extra: Any) -> Any:
    """The pydantic ``Field`` of an option: its title, description, default and bounds
    (``required``: a model that needs the value although the option has a default)."""
    kw: dict[str, Any] = {"title": o.title, "description": o.description, **extra}
    for bound in ("ge", "gt", "le"):
        if getattr(o, bound) is not None:
            kw[bound] = getattr(o, bound)
    if o.kind is float:
        kw["allow_inf_nan"] = False
    if o.alias:
        kw["validation_alias"] = AliasChoices(o.name, o.alias)
    if o.required or required:
        return Field(**kw)
    if o.kind is list and o.default == ():
        return Field(default_factory=list, **kw)
    return Field(o.default, **kw)


def _text_field(schema: dict) -> None:
    """In the run form: a plain text box (empty = not given), not a "str | None" switch
    whose None the schema's storage-or-config rule would then have to explain."""
    schema.pop("anyOf", None)
    schema.pop("default", None)
    schema["type"] = "string"


def _one_line(v: Optional[str]) -> Optional[str]:
    """The whole value is used as given: a newline or a control character is a typo that
    would name another file (or forge a log line), never trimmed silently."""
    if v is not None and CONTROL_RE.search(v):
        raise ValueError(f"{v!r} contains a control character (newline, tab, NUL...)")
    if v is not None and v and not v.strip():
        raise ValueError("must not be empty")
    if v is not None and v.strip() and v != v.strip():
        raise ValueError(f"{v!r} has leading or trailing spaces")
    return v


# The registry's storage-or-config rule, in the run form: a registry needs its storage
# folder unless its config.yml is given (then the storage is read from the config).
# ``if``/``then`` keeps the error on the field itself.
_TARGET_SCHEMA: JsonDict = {
    "if": {"anyOf": [
        {"not": {"required": ["registry_config"]}},
        {"required": ["registry_config"],
         "properties": {"registry_config": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 0}]}}},
    ]},
    "then": {"required": ["storage"], "properties": {"storage": {"type": "string", "minLength": 1}}},
}

# -- fields shared by more than one model (one definition each) -----------------------------------

def _repository(v: str) -> str:
    try:
        return Repository.parse(v).name
    except InvalidReference as e:
        raise ValueError(str(e)) from None


def _tag(v: str) -> str:
    try:
        return Tag.parse(v).name
    except InvalidReference as e:
        raise ValueError(str(e)) from None


# The flows' repository and tag: checked by the engine's own parser, and the same grammar in
# the JSON schema, so a run form (and the API) refuses 'LTSC 2019!' before a run exists
RepositoryName = Annotated[str, AfterValidator(_repository), Field(
    min_length=1, json_schema_extra={"pattern": REPOSITORY_PATTERN, "maxLength": 255})]
TagName = Annotated[str, AfterValidator(_tag), Field(
    min_length=1, json_schema_extra={"pattern": TAG_PATTERN, "maxLength": 128})]

def _command(v: Optional[str]) -> Optional[str]:
    if v is not None and "\x00" in v:
        raise ValueError("contains a NUL character")
    return v or None


VerifyCommand = Annotated[Optional[str], AfterValidator(_command), spec(VERIFY["command"])]


class RegistryParams(BaseModel):
    """Which registry: its storage, how to reach its API, how to restart it. The per-registry
    deployments made by `regpatch deployments --apply` name the registry's block instead."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Registry", json_schema_extra=_TARGET_SCHEMA,
                              populate_by_name=True)

    name: Optional[str] = spec(REGISTRY["name"])
    storage: Optional[str] = spec(REGISTRY["storage"], json_schema_extra=_text_field)
    registry_config: Optional[str] = spec(REGISTRY["registry_config"], json_schema_extra=_text_field)
    registry_url: Optional[str] = spec(REGISTRY["registry_url"])
    restart: str = spec(REGISTRY["restart"])
    registry_auth_file: Optional[str] = spec(REGISTRY["registry_auth_file"])
    registry_ca: Optional[str] = spec(REGISTRY["registry_ca"])
    insecure: bool = spec(REGISTRY["insecure"])
    state_dir: Optional[str] = spec(REGISTRY["state_dir"])
    lock_timeout: float = spec(REGISTRY["lock_timeout"])
    init: bool = spec(REGISTRY["init"])
    ignore_url_policy: bool = spec(REGISTRY["ignore_url_policy"])
    allow_cross_repository: bool = spec(REGISTRY["allow_cross_repository"])

    @field_validator("name")
    @classmethod
    def _name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v != "" and not REGISTRY_NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} must be 1-63 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        return v or None

    @field_validator("storage", "registry_config", "registry_url", "registry_auth_file", "registry_ca",
                     "state_dir", "restart")
    @classmethod
    def _line(cls, v: Optional[str]) -> Optional[str]:
        return _one_line(v)

    @field_validator("registry_url")
    @classmethod
    def _url(cls, v: Optional[str]) -> Optional[str]:
        if v and not URL_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a registry URL (http://HOST:PORT or https://HOST:PORT)")
        return v or None

    @field_validator("restart")
    @classmethod
    def _restart(cls, v: str) -> str:
        from regpatch.registry.restart import parse_restart_spec  # (the restart strategies import httpx)

        try:
            # syntax only: config= of process: may come from registry_config, so a
            # placeholder stands in; nothing is read
            placeholder = Path("config.yml") if v.strip().lower().startswith("process:") else None
            parse_restart_spec(v, registry_config=placeholder)
        except UsageError as e:
            raise ValueError(str(e)) from None
        return v

    def target(self) -> RegistryTarget:
        from regpatch.registry.target import RegistryTarget  # httpx: not needed to parse the flags

        if self.registry_url:
            refuse_inline_credentials("registry_url", self.registry_url)
        return RegistryTarget.resolve(storage=self.storage or None, url=self.registry_url or None,
                                      config=self.registry_config or None,
                                      auth_file=self.registry_auth_file or None, ca_file=self.registry_ca or None,
                                      insecure=self.insecure, state_dir=self.state_dir or None)

    def label(self, target: Optional[RegistryTarget] = None) -> str:
        """How runs, tags and artifacts name this registry: ``name``, else the host name
        and the storage folder (``myhost-srv-registry-data``)."""
        if self.name:
            return self.name
        storage = (target.storage if target else None) or self.storage or self.registry_config or "registry"
        host = socket.gethostname().split(".")[0] or "host"
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{host}-{storage}").strip("-._")
        return slug[:63].rstrip("-._") or "registry"


class VerifyParams(BaseModel):
    """How the new image is proven before the tag moves (the pull through the registry API
    always runs when the registry has a URL)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Verification")

    command: VerifyCommand = None
    always: bool = spec(VERIFY["always"])


class S3Params(BaseModel):
    """Only for s3://bucket/prefix bundles; leave as is for a folder."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="S3 (only for s3:// bundles)")

    endpoint_url: Optional[str] = spec(S3["endpoint_url"])
    region: Optional[str] = spec(S3["region"])
    aws_credentials_block: Optional[str] = spec(S3["aws_credentials_block"])
    cache_dir: Optional[str] = spec(S3["cache_dir"])
    retries: int = spec(S3["retries"])
    wait_initial: float = spec(S3["wait_initial"])
    wait_max: float = spec(S3["wait_max"])
    concurrency: int = spec(S3["concurrency"])
    part_size_mib: int = spec(S3["part_size_mib"])

    @field_validator("endpoint_url", "cache_dir")
    @classmethod
    def _line(cls, v: Optional[str]) -> Optional[str]:
        return _one_line(v)

    def options(self, credentials=None, region: Optional[str] = None) -> S3Options:
        """The core's S3Options (``credentials``: from a block, looked up by the caller)."""
        from regpatch.bundle.s3 import S3Options  # boto3: imported only for an S3 bundle

        if self.endpoint_url:
            refuse_inline_credentials("s3 endpoint_url", self.endpoint_url)
        opts = S3Options(endpoint_url=self.endpoint_url or None, region=self.region or region or None,
                         retries=self.retries, wait_initial=self.wait_initial, wait_max=self.wait_max,
                         cache_dir=self.cache_dir or None, concurrency=self.concurrency,
                         part_size=int(self.part_size_mib) << 20, credentials=credentials)
        opts.check()
        return opts


class TrustParams(BaseModel):
    """Which signatures a bundle must carry (bundles made by regpatch bundle --sign-key)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Signatures")

    trust_keys: list[str] = spec(TRUST["trust_keys"])
    allow_unsigned: bool = spec(TRUST["allow_unsigned"])
    allow_downgrade: bool = spec(TRUST["allow_downgrade"])

    @field_validator("trust_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        if any(not k.strip() for k in v):
            raise ValueError("a trust key path must not be empty")
        for k in v:
            _one_line(k)
        return v


class RetentionParams(BaseModel):
    """What ``prune`` keeps: every tagged image, the last K images of each tag, the recent ones."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Retention")

    keep: int = spec(RETENTION["keep"])
    keep_days: Optional[float] = spec(RETENTION["keep_days"])
    also_unrecorded: bool = spec(RETENTION["also_unrecorded"])

    def describe(self) -> str:
        """The policy in a few words (the history's source of a ``pruned`` line)."""
        days = f", images younger than {self.keep_days:g} days" if self.keep_days is not None else ""
        unrecorded = ", also images regpatch did not write" if self.also_unrecorded else ""
        return f"keep {self.keep} previous per tag{days}{unrecorded}"


class MaintenanceParams(BaseModel):
    """What ``gc`` runs in a maintenance window besides the registry's own settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Maintenance")

    registry_binary: Optional[str] = spec(MAINTENANCE["registry_binary"])

    @field_validator("registry_binary")
    @classmethod
    def _line(cls, v: Optional[str]) -> Optional[str]:
        return _one_line(v)


class RolloutParams(BaseModel):
    """Which registries of an inventory a rollout patches, and how many at once."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Rollout")

    inventory: Optional[str] = spec(ROLLOUT["inventory"], min_length=1)
    registry_blocks: Optional[list[str]] = spec(ROLLOUT["registry_blocks"])
    only: Optional[list[str]] = spec(ROLLOUT["only"])
    max_parallel: int = spec(ROLLOUT["max_parallel"])
    state_dir: Optional[str] = spec(ROLLOUT["state_dir"])
    patch_timeout: Optional[float] = spec(ROLLOUT["patch_timeout"])
    drop: Optional[str] = spec(ROLLOUT["drop"])
    max_bundle_age_days: float = spec(ROLLOUT["max_bundle_age_days"])

    @field_validator("inventory", "state_dir", "drop")
    @classmethod
    def _line(cls, v: Optional[str]) -> Optional[str]:
        return _one_line(v)

    @field_validator("only", "registry_blocks")
    @classmethod
    def _only(cls, v: Optional[list[str]], info: ValidationInfo) -> Optional[list[str]]:
        """Comma-separated and repeatable; spaces around a name are dropped, nothing else is.
        Given, it must name at least one registry (or group): an empty ``only`` never means the
        whole fleet (None does)."""
        if v is None:
            return None
        names = [n.strip(" ") for item in v for n in item.split(",") if n.strip(" ")]
        if not names:
            if info.field_name == "registry_blocks":
                raise ValueError("names no group; give the groups of the registry blocks to patch ('*': all)")
            raise ValueError("names no registry; give the names of the registries to patch, "
                             "or leave it out for all of them")
        return names

    @model_validator(mode="after")
    def _source(self) -> "RolloutParams":
        """The registries come from the inventory file or from the registry blocks: one of them.
        The state folder is beside the inventory by default; with blocks it must be given."""
        if bool(self.inventory) == bool(self.registry_blocks):
            raise ValueError(f"give {opt.inventory} or {opt.registry_blocks} (the groups of the registry "
                             "blocks to patch), one of them")
        if self.registry_blocks and not self.state_dir:
            raise ValueError(f"with {opt.registry_blocks}, give the rollout's state folder ({opt.state_dir})")
        return self


REQUESTED_BY_MAX, REASON_MAX = 200, 500


def _required_text(schema: dict) -> None:
    """In the run form and on the API: a text that must be given (an open-source Prefect
    server has no users to take it from), whatever the command line leaves out."""
    _text_field(schema)
    schema["minLength"] = 1


class ChangeParams(BaseModel):
    """Who asked for the change and why: recorded in the registry's history with the tag's
    move and shown in the summary. Both are required in the run form and on the API (the
    JSON schema); the command line fills in the requester (user@host) and may leave the
    reason out (recorded as not given)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Change request",
                              json_schema_extra={"required": ["requested_by", "reason"]})

    requested_by: str = spec(CHANGE["requested_by"], required=True, min_length=1, max_length=REQUESTED_BY_MAX,
                             json_schema_extra=_required_text)
    reason: Optional[str] = spec(CHANGE["reason"], max_length=REASON_MAX, json_schema_extra=_required_text)

    @field_validator("requested_by", "reason")
    @classmethod
    def _text(cls, v: Optional[str]) -> Optional[str]:
        _one_line(v)
        if v and has_inline_credentials(v):
            raise ValueError("carries a credential inline; it would be stored in the history and the run")
        return v or None


MODELS: dict[str, type[BaseModel]] = {"registry": RegistryParams, "verify": VerifyParams, "s3": S3Params,
                                      "trust": TrustParams, "rollout": RolloutParams, "retention": RetentionParams,
                                      "maintenance": MaintenanceParams, "change": ChangeParams}


# --------------------------------------------------------------------------- inline secrets

def has_inline_credentials(text: Optional[str]) -> bool:
    """True when ``text`` carries a credential literally (not as a $VARIABLE): the one
    detector of ``regpatch.sanitize``, the one that also redacts every message."""
    return has_credentials(text)


def refuse_inline_credentials(what: str, text: Optional[str]) -> None:
    found = find_credentials(text) if text else []
    if found:
        raise UsageError(f"{what} carries a credential inline ({found[0].carrier}); it would be stored with "
                         "the run. Put it in an environment variable and write $NAME (or %NAME% for cmd.exe) "
                         f"in its place, or use an auth file ({opt.registry_auth_file}) or "
                         "REGPATCH_REGISTRY_USERNAME/_PASSWORD")


# --------------------------------------------------------------------------- the caller's names

@contextmanager
def form_terms(groups: tuple[str, ...] = FORM_GROUPS) -> Iterator[None]:
    """Inside a flow: messages name the run form's fields, not flags."""
    with wording(form_namer(groups)):
        yield
