"""The patch-registry flow: ``regpatch.engine.patch`` with its steps as task runs."""

from __future__ import annotations

from typing import Annotated, Optional

from prefect import flow
from pydantic import Field

from regpatch import engine, interrupt
from regpatch.engine.requests import patch_request
from regpatch.errors import RegpatchError
from regpatch.options import opt
from regpatch.params import (
    ChangeParams,
    RegistryParams,
    RepositoryName,
    S3Params,
    TagName,
    TrustParams,
    VerifyParams,
    form_terms,
    refuse_inline_credentials,
)
from regpatch_tasks import debug_logs, failure_said_once, route_core_logs
from regpatch_tasks.observer import PrefectObserver, RunningSummary, label_registry_run, publish_patch, s3_options_for
from regpatch_tasks.registry_block import chosen

NonEmpty = Annotated[str, Field(min_length=1)]


@flow(name="patch-registry", log_prints=False, persist_result=False)
def patch_registry(
    bundle: NonEmpty,
    repository: RepositoryName,
    tag: TagName,
    registry: RegistryParams,
    change: ChangeParams,
    verify: VerifyParams = VerifyParams(),
    s3: S3Params = S3Params(),
    image: Optional[str] = None,
    dry_run: bool = False,
    consume: bool = False,
    trust: TrustParams = TrustParams(),
    debug: bool = False,
) -> engine.PatchResult:
    """Patch REPOSITORY:TAG in one registry's storage with BUNDLE: every byte is verified,
    blobs and links are written, the new image is pulled by digest, and only then does
    the tag move (if nobody else moved it meanwhile). A failed patch never moves the tag.

    Args:
        bundle: The patch bundle: a staged folder or an OCI layout, a path on the host that
            runs the patch, or s3://bucket/prefix.
        repository: Repository to patch, e.g. servercore or windows/servercore.
        tag: Tag to point at the bundle's image, e.g. ltsc2019.
        registry: The registry: a per-registry deployment has its regpatch-registry block chosen;
            otherwise give its storage folder or its config.yml.
        change: Who asked for the patch and why (a change ticket): recorded in the history.
        verify: Optional. An external puller run before the tag moves.
        s3: Only for s3:// bundles: endpoint, credentials block, retries.
        image: Only for an OCI layout holding several images: the one whose ref.name annotation is this.
        dry_run: Plan and hash every blob, write nothing.
        consume: Rename the bundle's layer files into the storage instead of copying them
            (the bundle must be on the storage's filesystem; it keeps a note of what was taken).
        trust: The keys whose signature a bundle must carry (regpatch bundle --sign-key).
        debug: Debug logs, and a traceback for every error.
    """
    route_core_logs()
    name = registry.label()  # (a block is a registry too: its name, before it is checked)
    with label_registry_run("patch", name, repository, tag), debug_logs(debug), form_terms(), \
            failure_said_once(f"patch of {repository}:{tag} on {name}"):
        running = RunningSummary(name, "patch", repository, tag)
        try:
            registry, verify, trust = chosen(registry, verify, trust)
            refuse_inline_credentials(opt.verify_command, verify.command)
            refuse_inline_credentials(opt.restart, registry.restart)
            request = patch_request(bundle=bundle, repository=repository, tag=tag, registry=registry,
                                    verify=verify, image=image, dry_run=dry_run, s3=s3_options_for(bundle, s3),
                                    consume=consume, trust=trust, change=change)
        except RegpatchError as e:  # before the engine: still a summary, and the outcome's labels
            publish_patch(name, None, None, e, repository=repository, tag=tag, change=change)
            raise
        try:
            with interrupt.chained_handlers():
                result = engine.patch(request, PrefectObserver(summary=running))
        except RegpatchError as e:
            publish_patch(name, request.target, getattr(e, "result", None), e, repository=repository, tag=tag,
                          change=change, running=running)
            raise
        publish_patch(name, request.target, result, running=running)
    return result
