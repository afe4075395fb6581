"""What a patch and a rollback are asked to do: ``PatchRequest`` and ``RollbackRequest``,
built from the parameter models (``patch_request``, ``rollback_request``) and checked
before any storage, bundle or network access."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from regpatch.digest import Digest
from regpatch.errors import UsageError
from regpatch.options import opt
from regpatch.params import ChangeParams, RegistryParams, TrustParams, VerifyParams
from regpatch.reference import Repository, Tag
from regpatch.registry.restart import parse_restart_spec
from regpatch.registry.target import RegistryTarget
from regpatch.signing.keys import load_public_key

if TYPE_CHECKING:  # boto3 behind it: imported only for an S3 bundle
    from regpatch.bundle.s3 import S3Options


def _check_lock_timeout(value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value < 0:
        raise UsageError(f"lock timeout must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


def check_verify_command(command: Optional[str], target: RegistryTarget) -> None:
    if command is None:
        return
    if "{ref}" not in command:
        raise UsageError("the verify command must contain {ref}, where the image reference goes "
                         "(host/repository@digest), e.g. 'skopeo inspect docker://{ref}'")
    if not target.url:
        raise UsageError(f"a verify command needs the registry's URL ({opt.registry_url} or "
                         f"{opt.registry_config}) to name the image it pulls")


def check_trust_options(trust_keys, allow_unsigned: bool) -> None:
    """Every trust key is a readable Ed25519 / P-256 public key; --allow-unsigned needs keys."""
    if allow_unsigned and not trust_keys:
        raise UsageError(f"{opt.allow_unsigned} only relaxes {opt.trust_key}: give the trust keys too, or "
                         "leave both out (bundles are then not signature-checked)")

    for key in trust_keys:
        load_public_key(key)


@dataclass(frozen=True)
class PatchRequest:
    """Everything a patch needs; ``check`` validates it without touching the storage.

    ``s3`` is a ``regpatch.bundle.s3.S3Options`` for s3:// bundles (it may hold
    credentials: a request is never logged, persisted or passed to a task).
    """

    bundle: str
    repository: Repository
    tag: Tag
    target: RegistryTarget
    restart: str = "none"
    image: Optional[str] = None
    verify_command: Optional[str] = None
    always_verify: bool = False
    dry_run: bool = False
    lock_timeout: float = 300.0
    s3: Optional[S3Options] = None
    init: bool = False               # create docker/registry/v2 when the storage has none
    consume: bool = False            # rename the bundle's layer files into the storage instead of copying
    ignore_url_policy: bool = False  # patch a manifest the registry's validation.manifests.urls would refuse
    allow_cross_repository: bool = False  # link blobs other repositories hold without the bundle carrying them
    trust_keys: tuple[str, ...] = ()  # PEM public keys: the bundle must be signed by one of them
    allow_unsigned: bool = False      # with trust_keys: accept a bundle without a signature
    allow_downgrade: bool = False     # accept a signed bundle older than the image the tag serves
    requested_by: Optional[str] = None  # who asked for the change (recorded in the history)
    reason: Optional[str] = None        # why: a change ticket (recorded in the history)

    def check(self) -> None:
        """Every check that needs no storage, bundle or network: bad arguments fail here."""
        if not isinstance(self.repository, Repository) or not isinstance(self.tag, Tag):
            raise UsageError("internal: repository and tag must be parsed values")
        if not self.bundle or not str(self.bundle).strip():
            raise UsageError("no bundle given")
        _check_lock_timeout(self.lock_timeout)
        check_verify_command(self.verify_command, self.target)
        parse_restart_spec(self.restart, registry_config=self.target.config_path)
        self.target.check()
        if self.s3 is not None:
            self.s3.check()
        check_trust_options(self.trust_keys, self.allow_unsigned)


@dataclass(frozen=True)
class RollbackRequest:
    repository: Repository
    tag: Tag
    target: RegistryTarget
    to: Optional[Digest] = None
    restart: str = "none"
    verify_command: Optional[str] = None
    lock_timeout: float = 300.0
    requested_by: Optional[str] = None
    reason: Optional[str] = None

    def check(self) -> None:
        _check_lock_timeout(self.lock_timeout)
        check_verify_command(self.verify_command, self.target)
        parse_restart_spec(self.restart, registry_config=self.target.config_path)
        self.target.check()


def patch_request(*, bundle: str, repository: str, tag: str, registry: RegistryParams,
                  verify: Optional[VerifyParams] = None, image: Optional[str] = None, dry_run: bool = False,
                  s3: Optional[S3Options] = None, consume: bool = False,
                  trust: Optional[TrustParams] = None, change: Optional[ChangeParams] = None) -> PatchRequest:
    """A checked ``PatchRequest`` from the parameter models; raises UsageError naming the
    option. No I/O but reading the registry's config.yml and checking the files named."""
    verify, trust = verify or VerifyParams(), trust or TrustParams()
    request = PatchRequest(bundle=bundle, repository=Repository.parse(repository), tag=Tag.parse(tag),
                           target=registry.target(), restart=registry.restart, image=image,
                           verify_command=verify.command, always_verify=verify.always, dry_run=dry_run,
                           lock_timeout=registry.lock_timeout, s3=s3, init=registry.init, consume=consume,
                           ignore_url_policy=registry.ignore_url_policy,
                           allow_cross_repository=registry.allow_cross_repository,
                           trust_keys=tuple(trust.trust_keys), allow_unsigned=trust.allow_unsigned,
                           allow_downgrade=trust.allow_downgrade,
                           requested_by=change.requested_by if change else None,
                           reason=change.reason if change else None)
    request.check()
    return request


def rollback_request(*, repository: str, tag: str, registry: RegistryParams, to: Optional[str] = None,
                     verify: Optional[VerifyParams] = None,
                     change: Optional[ChangeParams] = None) -> RollbackRequest:
    verify = verify or VerifyParams()
    request = RollbackRequest(repository=Repository.parse(repository), tag=Tag.parse(tag),
                              target=registry.target(), to=Digest.parse(to) if to else None,
                              restart=registry.restart, verify_command=verify.command,
                              lock_timeout=registry.lock_timeout,
                              requested_by=change.requested_by if change else None,
                              reason=change.reason if change else None)
    request.check()
    return request
