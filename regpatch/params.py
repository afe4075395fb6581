"""The parameters of a patch or a rollback as plain, described values.

The same models serve the command line (built from its flags), the Prefect flows
(their parameters: the UI shows one group per model, with these descriptions)
and the inventory. They hold no secret: credentials are read where they are used
(environment, auth file, a Prefect block looked up inside the run). A value that
carries a credential inline (a password in a URL, a verify or a restart command) is refused
wherever it would be stored, before the run exists.

``patch_request`` / ``rollback_request`` turn them into the engine's requests.
"""

from __future__ import annotations

import re
import socket
from contextlib import contextmanager
from typing import Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from regpatch.digest import Digest
from regpatch.engine.requests import PatchRequest, RollbackRequest
from regpatch.errors import UsageError
from regpatch.reference import Repository, Tag
from regpatch.registry.target import RegistryTarget

REGISTRY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

# The Prefect run form validates its values with the flow's JSON schema before a run
# exists: a registry needs its storage folder unless its config.yml is given (then the
# storage is read from the config). ``if``/``then`` keeps the error on the field itself.
_TARGET_SCHEMA = {
    "if": {"anyOf": [
        {"not": {"required": ["registry_config"]}},
        {"required": ["registry_config"],
         "properties": {"registry_config": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 0}]}}},
    ]},
    "then": {"required": ["storage"], "properties": {"storage": {"type": "string", "minLength": 1}}},
}


def _text_field(schema: dict) -> None:
    """In the run form: a plain text box (empty = not given), not a "str | None" switch
    whose None the schema's storage-or-config rule would then have to explain."""
    schema.pop("anyOf", None)
    schema.pop("default", None)
    schema["type"] = "string"


class RegistryParams(BaseModel):
    """Which registry: its storage, how to reach its API, how to restart it. Per-host
    deployments made by `regpatch deployments` fill these in from the inventory."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Registry",
                              json_schema_extra=_TARGET_SCHEMA)

    name: Optional[str] = Field(
        None, title="Registry name",
        description="Short name of this registry, e.g. site-a (letters, digits, '.', '_', '-'). Runs are "
                    "named NAME-REPOSITORY-TAG and tagged registry:NAME; the summary artifact is keyed the "
                    "same way. Default: the host name and the storage folder.")
    storage: Optional[str] = Field(
        None, title="Storage folder (rootdirectory)", json_schema_extra=_text_field,
        description="Required unless the registry's config.yml is given. The registry's rootdirectory: the "
                    "folder that holds docker/registry/v2, on the host that runs the patch.")
    registry_config: Optional[str] = Field(
        None, title="Registry config.yml", json_schema_extra=_text_field,
        description="The registry's config.yml on the host that runs the patch: the storage folder and the "
                    "API URL are read from it (the two fields above and below win when set).")
    registry_url: Optional[str] = Field(
        None, title="Registry API URL",
        description="For the verification pull, e.g. http://127.0.0.1:5000. Without any URL the new image "
                    "is checked in the storage only, not pulled.")
    restart: str = Field(
        "none", title="Restart",
        description="How to restart the registry before the verification pull: none (a patch needs none), "
                    "command:COMMAND (a shell command), or process:pidfile=PATH[,config=PATH][,binary=PATH]"
                    "[,log=PATH][,pass_env=NAME+NAME].")
    registry_auth_file: Optional[str] = Field(
        None, title="Auth file",
        description="Optional. A docker config.json holding credentials for the registry (read on the host "
                    "that runs the patch; never copied into the run).")
    registry_ca: Optional[str] = Field(
        None, title="CA bundle", description="Optional. CA bundle (PEM) for the registry's TLS certificate.")
    insecure: bool = Field(False, title="Insecure", description="Allow plain HTTP and skip TLS verification.")
    state_dir: Optional[str] = Field(
        None, title="State folder",
        description="Optional. regpatch's journal, history and reports (default: .regpatch in the storage "
                    "folder).")
    lock_timeout: float = Field(
        300.0, ge=0, allow_inf_nan=False, title="Lock timeout (s)",
        description="Seconds to wait for another patch of the same repository.")
    init: bool = Field(False, title="Create a new storage",
                       description="Create docker/registry/v2 when the storage has none (a new, "
                                          "empty registry); without it such a storage is refused as a typo.")
    ignore_url_policy: bool = Field(
        False, title="Ignore the URL policy",
        description="Patch a manifest whose foreign-layer URLs the registry's own rules "
                           "(validation.manifests.urls in its config.yml) would refuse on a push; "
                           "each refusal becomes a warning.")
    allow_cross_repository: bool = Field(
        False, title="Allow other repositories' blobs",
        description="Let the image link blobs that other repositories of this registry hold but "
                           "the bundle does not carry (by default only a bundle that carries the bytes, or "
                           "a signed bundle that lists them as assumed present, may do so).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v != "" and not REGISTRY_NAME_RE.fullmatch(v):
            raise ValueError(f"registry name {v!r} must be 1-63 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        return v or None

    def target(self) -> RegistryTarget:
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

    command: Optional[str] = Field(
        None, title="Verify command",
        description="Optional. External puller run after the API pull, with {ref} replaced by "
                    "host/repository@digest, e.g. skopeo inspect --tls-verify=false docker://{ref}. "
                    "Credentials go in environment variables ($VAR), never inline.")
    always: bool = Field(False, title="Always pull",
                         description="Pull again even when the storage already holds the whole "
                                     "patch and a pull through the same URL proved it.")


class S3Params(BaseModel):
    """Only for s3://bucket/prefix bundles; leave as is for a folder."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="S3 (only for s3:// bundles)")

    endpoint_url: Optional[str] = Field(None, title="Endpoint URL",
                                        description="S3 endpoint (MinIO, Ceph...); default $AWS_ENDPOINT_URL, "
                                                    "else AWS.")
    region: Optional[str] = Field(None, title="Region", description="Default: boto3's, else us-east-1.")
    aws_credentials_block: Optional[str] = Field(
        None, title="AwsCredentials block",
        description="A prefect-aws AwsCredentials block holding the credentials (default: boto3's "
                    "chain: environment, profile, instance role).")
    cache_dir: Optional[str] = Field(None, title="Cache folder",
                                     description="Keep fetched blobs here by digest for later patches.")
    retries: int = Field(5, ge=0, le=100, title="Retries", description="Retries of each S3 call on transient faults.")
    wait_initial: float = Field(0.5, ge=0, allow_inf_nan=False, title="First back-off (s)",
                                description="First back-off in seconds.")
    wait_max: float = Field(20.0, ge=0, allow_inf_nan=False, title="Longest back-off (s)",
                            description="Longest back-off in seconds.")
    concurrency: int = Field(4, ge=1, le=64, title="Parallel GETs",
                             description="Ranged GETs at once for a large blob (1: one stream).")
    part_size_mib: int = Field(8, ge=1, le=5120, title="Part size (MiB)", description="Size of one ranged GET in MiB.")

    def options(self, credentials=None, region: Optional[str] = None):
        """The core's S3Options (``credentials``: from a block, looked up by the caller)."""
        from regpatch.bundle.s3 import S3Options

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

    trust_keys: list[str] = Field(
        default_factory=list, title="Trust keys",
        description="PEM public keys (Ed25519 or ECDSA P-256) on the host that runs the patch: the "
                    "bundle's regpatch-bundle.json must be signed by one of them, its listing must match "
                    "and the blobs it assumes present must be in the storage, before anything is staged.")
    allow_unsigned: bool = Field(
        False, title="Allow unsigned",
        description="With trust keys: accept a bundle that carries no signature (a signature that no trust "
                    "key verifies is refused all the same).")


def patch_request(*, bundle: str, repository: str, tag: str, registry: RegistryParams,
                  verify: VerifyParams = VerifyParams(), image: Optional[str] = None, dry_run: bool = False,
                  s3=None, consume: bool = False, trust: TrustParams = TrustParams()) -> PatchRequest:
    """Parse and check everything; raises UsageError naming the parameter. No I/O but
    reading the registry's config.yml and checking the files named."""
    request = PatchRequest(bundle=bundle, repository=Repository.parse(repository), tag=Tag.parse(tag),
                           target=registry.target(), restart=registry.restart, image=image,
                           verify_command=verify.command, always_verify=verify.always, dry_run=dry_run,
                           lock_timeout=registry.lock_timeout, s3=s3, init=registry.init, consume=consume,
                           ignore_url_policy=registry.ignore_url_policy,
                           allow_cross_repository=registry.allow_cross_repository,
                           trust_keys=tuple(trust.trust_keys), allow_unsigned=trust.allow_unsigned)
    request.check()
    return request


def rollback_request(*, repository: str, tag: str, registry: RegistryParams, to: Optional[str] = None,
                     verify: VerifyParams = VerifyParams()) -> RollbackRequest:
    request = RollbackRequest(repository=Repository.parse(repository), tag=Tag.parse(tag),
                              target=registry.target(), to=Digest.parse(to) if to else None,
                              restart=registry.restart, verify_command=verify.command,
                              lock_timeout=registry.lock_timeout)
    request.check()
    return request


# --------------------------------------------------------------------------- inline secrets

_SECRET_PATTERNS = (
    re.compile(r"://[^/@\s]*:[^/@\s]*@"),                                  # user:password@host
    re.compile(r"(?:^|\s)--(?:creds|src-creds|dest-creds|password|registry-token|token)(?:=|\s+)"
               r"(?!['\"]?\$)\S"),                                          # --creds user:pw (not $VAR)
    re.compile(r"(?:^|\s)-p(?:\s+|=)?(?!['\"]?\$)\S"),                      # -p secret (docker login)
    re.compile(r"\b\w*(?:PASSWORD|TOKEN|SECRET)\w*=(?!['\"]?\$)\S", re.IGNORECASE),
)


def has_inline_credentials(text: str) -> bool:
    """True when ``text`` carries a credential literally (not as a $VARIABLE)."""
    return any(p.search(text) for p in _SECRET_PATTERNS)


def refuse_inline_credentials(what: str, text: Optional[str]) -> None:
    if text and has_inline_credentials(text):
        raise UsageError(f"{what} carries a credential inline; it would be stored with the run. "
                         "Put it in an environment variable and write $NAME in its place, or use an "
                         "auth file (--registry-auth-file) or REGPATCH_REGISTRY_USERNAME/_PASSWORD")


# --------------------------------------------------------------------------- the caller's names

# The command line's flags and the run form's fields for the same values: a message
# raised by the core names flags; a run started from the form gets the field instead.
FORM_FIELDS = {
    "--storage": ("registry", "storage"), "--registry-config": ("registry", "registry_config"),
    "--registry-url": ("registry", "registry_url"), "--registry-auth-file": ("registry", "registry_auth_file"),
    "--registry-ca": ("registry", "registry_ca"), "--insecure": ("registry", "insecure"),
    "--restart": ("registry", "restart"), "--state-dir": ("registry", "state_dir"),
    "--lock-timeout": ("registry", "lock_timeout"), "--registry-name": ("registry", "name"),
    "--verify-command": ("verify", "command"), "--always-verify": ("verify", "always"),
    "--s3-endpoint-url": ("s3", "endpoint_url"), "--s3-region": ("s3", "region"),
    "--aws-credentials-block": ("s3", "aws_credentials_block"), "--cache-dir": ("s3", "cache_dir"),
    "--s3-retries": ("s3", "retries"), "--s3-wait-initial": ("s3", "wait_initial"),
    "--s3-wait-max": ("s3", "wait_max"), "--s3-concurrency": ("s3", "concurrency"),
    "--s3-part-size": ("s3", "part_size_mib"), "--image": (None, "image"), "--dry-run": (None, "dry_run"),
    "--to": (None, "to"), "--init": ("registry", "init"), "--consume": (None, "consume"),
    "--ignore-url-policy": ("registry", "ignore_url_policy"),
    "--allow-cross-repository": ("registry", "allow_cross_repository"),
    "--trust-key": ("trust", "trust_keys"), "--allow-unsigned": ("trust", "allow_unsigned"),
}
_MODELS = {"registry": RegistryParams, "verify": VerifyParams, "s3": S3Params, "trust": TrustParams}
# a flag with its metavar, as the core's messages write it ("--storage ROOT")
_FLAG_RE = re.compile(r"--[a-z0-9-]+(?: (?:ROOT|URL|FILE|PEM|SPEC|DIR|SECONDS|NAME|DIGEST|CMD|CONFIG_YML|PUB|"
                      r"config\.yml))?")


def form_field(flag: str) -> Optional[str]:
    """``--storage`` -> ``"Storage folder (rootdirectory)" (registry.storage)``; None for other text."""
    group, key = FORM_FIELDS.get(flag, (None, None))
    if key is None:
        return None
    if group is None:
        return f"the field {key!r}"
    title = _MODELS[group].model_fields[key].title or key
    return f'"{title}" ({group}.{key})'


def in_form_terms(message: str) -> str:
    """A core message rewritten for someone filling the run form: every flag it names
    becomes the form field that holds the same value."""
    def swap(m: re.Match) -> str:
        flag = m.group(0).split(" ", 1)[0]
        return form_field(flag) or m.group(0)

    return _FLAG_RE.sub(swap, message)


@contextmanager
def form_terms() -> Iterator[None]:
    """Inside a flow: a RegpatchError raised in the block names form fields, not flags."""
    from regpatch.errors import RegpatchError

    try:
        yield
    except RegpatchError as e:
        e.message = in_form_terms(e.message)
        raise
