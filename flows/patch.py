"""The patch-registry flow: ``regpatch.engine.patch`` with its steps as task runs."""

from __future__ import annotations

from typing import Optional

from prefect import flow

from regpatch import engine, interrupt
from regpatch.errors import RegpatchError
from regpatch.params import (RegistryParams, S3Params, TrustParams, VerifyParams, patch_request,
                             refuse_inline_credentials)
from tasks.observer import PrefectObserver, publish_summary, s3_options_for


@flow(name="patch-registry", log_prints=False, persist_result=False)
def patch_registry(
    bundle: str,
    repository: str,
    tag: str,
    registry: RegistryParams,
    verify: VerifyParams = VerifyParams(),
    s3: S3Params = S3Params(),
    image: Optional[str] = None,
    dry_run: bool = False,
    consume: bool = False,
    trust: TrustParams = TrustParams(),
) -> engine.PatchResult:
    """Patch REPOSITORY:TAG in one registry's storage with BUNDLE: every byte is verified,
    blobs and links are written, the new image is pulled by digest, and only then does
    the tag move (if nobody else moved it meanwhile).

    Args:
        bundle: The patch bundle: a staged folder or an OCI layout, a path on the host that
            runs the patch, or s3://bucket/prefix.
        repository: Repository to patch, e.g. servercore or windows/servercore.
        tag: Tag to point at the bundle's image, e.g. ltsc2019.
        registry: The registry: its storage (or config.yml), API URL, restart strategy.
        verify: How the new image is proven before the tag moves.
        s3: For s3:// bundles: endpoint, credentials block, retries.
        image: For an OCI layout holding several images, the one whose ref.name annotation is this.
        dry_run: Plan and hash every blob, write nothing.
        consume: Rename the bundle's layer files into the storage instead of copying them
            (the bundle must be on the storage's filesystem; it keeps a note of what was taken).
        trust: The keys whose signature a bundle must carry (regpatch bundle --sign-key).
    """
    refuse_inline_credentials("verify.command", verify.command)
    refuse_inline_credentials("registry.restart", registry.restart)
    request = patch_request(bundle=bundle, repository=repository, tag=tag, registry=registry, verify=verify,
                            image=image, dry_run=dry_run, s3=s3_options_for(bundle, s3), consume=consume,
                            trust=trust)
    try:
        with interrupt.chained_handlers():
            result = engine.patch(request, PrefectObserver())
    except RegpatchError as e:
        publish_summary(getattr(e, "result", None))
        raise
    publish_summary(result)
    return result
