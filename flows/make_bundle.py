"""The make-bundle flow (connected side): the monthly "build the shuttle" step.

Thin: one task calls ``regpatch.shuttle.make_bundle`` and the flow publishes
what was written as a markdown artifact. Parameters are plain values: the
signing key is a path on the worker's host (an encrypted key is opened with
``$REGPATCH_SIGN_KEY_PASSWORD`` from the worker's environment), S3 credentials
come from boto3's chain or a prefect-aws ``AwsCredentials`` block looked up
inside the task, so no secret is ever a parameter, a task input or a result.
"""

from __future__ import annotations

from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from regpatch.progress import Progress, human
from regpatch.sanitize import redact
from regpatch.shuttle.make import BundleReport
from regpatch.shuttle.make import make_bundle as core_make_bundle
from regpatch.shuttle.sources import RegistryOptions
from regpatch_tasks import failure_said_once, route_core_logs
from regpatch_tasks.observer import label_run, run_name


@task(name="write-bundle", cache_policy=NO_CACHE, persist_result=False)
def write_bundle(source: str, out: str, have: list[str], sign_key: Optional[str], image: Optional[str],
                 platform: Optional[str], repository: Optional[str], tag: Optional[str],
                 registry: RegistryOptions, s3: Optional[dict]) -> BundleReport:
    """Stream the image's missing blobs into DEST, hashed; write and sign regpatch-bundle.json."""
    options = None
    if out.startswith("s3://"):
        from regpatch_tasks.s3_support import s3_options  # boto3 (and a Prefect block): only for s3://

        options = s3_options(**(s3 or {}))
    report = core_make_bundle(source, out, have=have, sign_key=sign_key, image=image, platform=platform,
                              repository=repository, tag=tag, registry=registry, s3=options,
                              progress=Progress())
    get_run_logger().info("%s", report.summary())
    return report


@flow(name="make-bundle", log_prints=False, persist_result=False)
def make_bundle(
    source: str,
    out: str,
    have: Optional[list[str]] = None,
    sign_key: Optional[str] = None,
    image: Optional[str] = None,
    platform: Optional[str] = None,
    repository: Optional[str] = None,
    tag: Optional[str] = None,
    registry_auth_file: Optional[str] = None,
    registry_ca: Optional[str] = None,
    insecure: bool = False,
    s3_endpoint_url: Optional[str] = None,
    s3_region: Optional[str] = None,
    aws_credentials_block: Optional[str] = None,
    s3_retries: int = 5,
    s3_part_size_mib: int = 8,
) -> dict:
    """Make a delta bundle of SOURCE for one site, signed, in a folder or s3://bucket/prefix.

    Args:
        source: The image: docker://HOST[:PORT]/REPO:TAG (or @sha256:...), an OCI layout folder,
            or a dir: folder, on the host that runs the flow.
        out: Destination: a new or empty folder (or one an earlier run wrote), or s3://bucket/prefix.
        have: Contents files of the target site (regpatch contents on the site): their blobs are
            not carried, and are recorded as assumed present.
        sign_key: Path of the PEM private key (Ed25519 or P-256) that signs regpatch-bundle.json.
        image: For an OCI layout source holding several images, the one with this ref.name.
        platform: OS/ARCH[/VARIANT][:OSVERSION] to take one manifest of a multi-platform index.
        repository: Repository the bundle is meant for (default: the source's).
        tag: Tag the bundle is meant for (default: the source's).
        registry_auth_file: A docker config.json with credentials for the source registry.
        registry_ca: CA bundle for the source registry's TLS certificate.
        insecure: Allow plain HTTP and skip TLS verification of the source registry.
        s3_endpoint_url: For s3:// destinations, the S3 endpoint (default $AWS_ENDPOINT_URL).
        s3_region: For s3:// destinations, the region.
        aws_credentials_block: For s3:// destinations, a prefect-aws AwsCredentials block name.
        s3_retries: For s3:// destinations, retries of each S3 call on transient faults.
        s3_part_size_mib: For s3:// destinations, the multipart part size in MiB (at least 5).
    """
    route_core_logs()
    with label_run(bundle_run_name(source, repository, tag), []), failure_said_once("make-bundle"):
        s3 = dict(endpoint_url=s3_endpoint_url, region=s3_region, aws_credentials_block=aws_credentials_block,
                  retries=s3_retries, part_size_mib=s3_part_size_mib)
        report = write_bundle(source, out, list(have or []), sign_key, image, platform, repository, tag,
                              RegistryOptions(registry_auth_file, registry_ca, insecure), s3)
        create_markdown_artifact(key="bundle-" + "".join(c if c.isalnum() else "-" for c in
                                                         (report.descriptor.tag or "image").lower())[:80],
                                 markdown=render_markdown(report), description=f"bundle {report.dest}")
        d = report.descriptor
        return {"dest": report.dest, "image": str(d.image.digest), "repository": d.repository, "tag": d.tag,
                "carried": [(str(b.digest), b.size) for b in d.blobs],
                "assumed": [(str(b.digest), b.size) for b in d.assumed],
                "bytes_carried": d.bytes_carried, "signed_with": report.signed_with,
                "written": report.written, "reused": report.reused, "seconds": report.seconds,
                "warnings": report.warnings}


def bundle_run_name(source: str, repository: Optional[str], tag: Optional[str]) -> str:
    """``make-bundle servercore:ltsc2019``: the repository:tag the bundle is meant for, else the
    source's last part (``docker://host/servercore:ltsc2019``: ``servercore:ltsc2019``)."""
    if repository and tag:
        return run_name("make-bundle", None, repository, tag)
    return run_name("make-bundle", None, redact(source).rstrip("/").rsplit("/", 1)[-1] or None)


def render_markdown(r: BundleReport) -> str:
    d = r.descriptor
    lines = [f"# Bundle `{r.dest}`", "", "| | |", "|---|---|",
             f"| image | `{d.image.digest}` ({d.image.media_type}) |",
             f"| meant for | `{d.repository or '?'}:{d.tag or '?'}` |",
             f"| platforms | {', '.join(m.platform_text or '?' for m in d.manifests)} |",
             f"| carried | {len(d.blobs)} blobs, {human(d.bytes_carried)} |",
             f"| assumed present at the site | {len(d.assumed)} blobs, "
             f"{human(sum(b.size for b in d.assumed))} |",
             "| made against | " + (", ".join(f"`{c.name}` ({c.sha256})" for c in d.contents)
                                   or "nothing (full bundle)") + " |",
             f"| signature | {r.signed_with or 'NOT signed'} |",
             f"| this run | {len(r.written)} written, {len(r.reused)} already complete, "
             f"{r.resumed_bytes:,} B resumed, {r.seconds:.2f}s |", "",
             "## Blobs", "", "| digest | size | |", "|---|---:|---|"]
    lines += [f"| `{b.digest}` | {b.size:,} | carried |" for b in d.blobs]
    lines += [f"| `{b.digest}` | {b.size:,} | assumed present |" for b in d.assumed]
    if r.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"
