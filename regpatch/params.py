"""The parameters of a patch or a rollback as plain, described values.

The same models serve the command line (built from its flags), the Prefect flows
(their parameters: the UI shows one group per model, with these descriptions)
and the inventory. They hold no secret: credentials are read where they are used
(environment, auth file, a Prefect block looked up inside the run). A value that
carries a credential inline (a password in a URL or a verify command) is refused
wherever it would be stored, before the run exists.

``patch_request`` / ``rollback_request`` turn them into the engine's requests.
"""

from __future__ import annotations

import re
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from .digest import Digest
from .engine import PatchRequest, RollbackRequest
from .errors import UsageError
from .reference import Repository, Tag
from .target import RegistryTarget


class RegistryParams(BaseModel):
    """Which registry: its storage, how to reach its API, how to restart it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: Optional[str] = Field(
        None, description="The registry's rootdirectory (the folder that holds docker/registry/v2) "
                          "on the host that runs the patch. Optional when registry_config is given.")
    registry_config: Optional[str] = Field(
        None, description="The registry's config.yml: the storage root and the URL are read from it.")
    registry_url: Optional[str] = Field(
        None, description="Registry API for the verification pull, e.g. http://127.0.0.1:5000. "
                          "Without any URL the new image is checked in the storage only.")
    restart: str = Field(
        "none", description="How to restart the registry before the verification pull: none, "
                            "command:<shell command>, or process:pidfile=PATH[,config=PATH][,binary=PATH]"
                            "[,log=PATH][,pass_env=NAME+NAME].")
    registry_auth_file: Optional[str] = Field(
        None, description="A docker config.json holding credentials for the registry (read on the "
                          "host that runs the patch; never copied into the run).")
    registry_ca: Optional[str] = Field(None, description="CA bundle (PEM) for the registry's TLS certificate.")
    insecure: bool = Field(False, description="Allow plain HTTP and skip TLS verification.")
    state_dir: Optional[str] = Field(
        None, description="regpatch's journal, history and reports (default <storage>/.regpatch).")
    lock_timeout: float = Field(
        300.0, ge=0, allow_inf_nan=False,
        description="Seconds to wait for another patch of the same repository.")
    init: bool = Field(False, description="Create docker/registry/v2 when the storage has none (a new, "
                                          "empty registry); without it such a storage is refused as a typo.")
    ignore_url_policy: bool = Field(
        False, description="Patch a manifest whose foreign-layer URLs the registry's own rules "
                           "(validation.manifests.urls in its config.yml) would refuse on a push; "
                           "each refusal becomes a warning.")
    allow_cross_repository: bool = Field(
        False, description="Let the image link blobs that other repositories of this registry hold but "
                           "the bundle does not carry (by default only a bundle that carries the bytes, or "
                           "a signed bundle that lists them as assumed present, may do so).")

    def target(self) -> RegistryTarget:
        if self.registry_url:
            refuse_inline_credentials("registry_url", self.registry_url)
        return RegistryTarget.resolve(storage=self.storage, url=self.registry_url, config=self.registry_config,
                                      auth_file=self.registry_auth_file, ca_file=self.registry_ca,
                                      insecure=self.insecure, state_dir=self.state_dir)


class VerifyParams(BaseModel):
    """How the new image is proven before the tag moves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: Optional[str] = Field(
        None, description="External puller run after the API pull, with {ref} replaced by "
                          "host/repository@digest, e.g. skopeo inspect --tls-verify=false docker://{ref}. "
                          "Credentials go in environment variables ($VAR), never inline.")
    always: bool = Field(False, description="Pull again even when the storage already holds the whole "
                                            "patch and a pull through the same URL proved it.")


class S3Params(BaseModel):
    """For s3://bucket/prefix bundles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: Optional[str] = Field(None, description="S3 endpoint (MinIO, Ceph...); default $AWS_ENDPOINT_URL, else AWS.")
    region: Optional[str] = Field(None, description="Region (default: boto3's, else us-east-1).")
    aws_credentials_block: Optional[str] = Field(
        None, description="A prefect-aws AwsCredentials block holding the credentials (default: boto3's "
                          "chain: environment, profile, instance role).")
    cache_dir: Optional[str] = Field(None, description="Keep fetched blobs here by digest for later patches.")
    retries: int = Field(5, ge=0, le=100, description="Retries of each S3 call on transient faults.")
    wait_initial: float = Field(0.5, ge=0, allow_inf_nan=False, description="First back-off in seconds.")
    wait_max: float = Field(20.0, ge=0, allow_inf_nan=False, description="Longest back-off in seconds.")
    concurrency: int = Field(4, ge=1, le=64, description="Ranged GETs at once for a large blob (1: one stream).")
    part_size_mib: int = Field(8, ge=1, le=5120, description="Size of one ranged GET in MiB.")

    def options(self, credentials=None, region: Optional[str] = None):
        """The core's S3Options (``credentials``: from a block, looked up by the caller)."""
        from .bundle.s3 import S3Options

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

    model_config = ConfigDict(extra="forbid", frozen=True)

    trust_keys: list[str] = Field(
        default_factory=list,
        description="PEM public keys (Ed25519 or ECDSA P-256) on the host that runs the patch: the "
                    "bundle's regpatch-bundle.json must be signed by one of them, its listing must match "
                    "and the blobs it assumes present must be in the storage, before anything is staged.")
    allow_unsigned: bool = Field(
        False, description="With trust keys: accept a bundle that carries no signature (a signature "
                           "that no trust key verifies is refused all the same).")


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
