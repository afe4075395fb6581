"""regpatch command line: parses, runs a flow, maps errors to exit codes.

This module never imports Prefect at module level: the flows are imported
when a command runs, after the logging environment is set.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from .errors import RegpatchError

EXIT_INTERRUPTED = 130


def _add_target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="ROOT",
                   help="the registry's rootdirectory (the folder that holds docker/registry/v2)")
    p.add_argument("--registry-config", metavar="CONFIG_YML",
                   help="the registry's config.yml: storage root and URL are read from it")
    p.add_argument("--registry-url", metavar="URL",
                   help="registry API for the verification pull, e.g. https://registry.local:5000")
    p.add_argument("--registry-auth-file", metavar="FILE",
                   help="docker config.json with credentials (default: REGPATCH_REGISTRY_USERNAME/"
                        "REGPATCH_REGISTRY_PASSWORD, then the usual docker/podman auth files)")
    p.add_argument("--registry-ca", metavar="PEM", help="CA bundle to verify the registry's TLS certificate")
    p.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP / skip TLS verification of the registry")


def _add_state_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", metavar="DIR",
                   help="regpatch's journal, history and locks (default ROOT/.regpatch, outside docker/)")
    p.add_argument("--lock-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="wait this long for another patch of the same repository (default 300)")


def _add_s3_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("S3 bundles (BUNDLE = s3://bucket/prefix)")
    g.add_argument("--s3-endpoint-url", metavar="URL",
                   help="S3-compatible endpoint (MinIO, Ceph, ...); default $AWS_ENDPOINT_URL, else AWS")
    g.add_argument("--s3-region", metavar="REGION", help="region (default: boto3's, else us-east-1)")
    g.add_argument("--aws-credentials-block", metavar="NAME",
                   help="Prefect AwsCredentials block (prefect-aws) holding the credentials; default: "
                        "boto3's chain (environment, profile, instance role)")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="keep fetched blobs here by digest; later patches take them from here")
    g.add_argument("--s3-retries", type=int, default=5, metavar="N",
                   help="retries of each S3 call on transient faults (default 5)")
    g.add_argument("--s3-wait-initial", type=float, default=0.5, metavar="SECONDS",
                   help="first backoff between retries, doubled each time, with jitter (default 0.5)")
    g.add_argument("--s3-wait-max", type=float, default=20.0, metavar="SECONDS",
                   help="longest backoff between retries (default 20)")
    g.add_argument("--s3-concurrency", type=int, default=4, metavar="N",
                   help="ranged GETs at once for a large blob (default 4; 1: one streaming GET per blob)")
    g.add_argument("--s3-part-size", type=int, default=8, metavar="MIB",
                   help="size of one ranged GET in MiB (default 8); blobs up to two parts are one GET")


def _s3_kwargs(args: argparse.Namespace) -> dict:
    return dict(s3_endpoint_url=args.s3_endpoint_url, s3_region=args.s3_region,
                aws_credentials_block=args.aws_credentials_block, cache_dir=args.cache_dir,
                s3_retries=args.s3_retries, s3_wait_initial=args.s3_wait_initial,
                s3_wait_max=args.s3_wait_max, s3_concurrency=args.s3_concurrency,
                s3_part_size_mib=args.s3_part_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regpatch",
        description="Patch container images inside a distribution registry's storage and verify by pulling.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("patch", help="apply a patch bundle to one registry",
                       description="Apply BUNDLE to REPOSITORY:TAG in a registry's storage: verify every "
                                   "byte, copy blobs, write links (tag last), restart if asked, verify by pulling.")
    p.add_argument("bundle", metavar="BUNDLE",
                   help="staged folder or OCI layout folder, local or s3://bucket/prefix")
    p.add_argument("--repository", required=True, metavar="NAME")
    p.add_argument("--tag", required=True)
    _add_target_options(p)
    p.add_argument("--restart", default="none", metavar="SPEC",
                   help="none (default) | command:<shell command> | "
                        "process:pidfile=PATH[,config=PATH][,binary=PATH][,log=PATH]")
    p.add_argument("--image", metavar="NAME", help="image of an OCI layout, by its ref.name annotation")
    p.add_argument("--verify-command", metavar="CMD",
                   help="external puller run after the API pull, {ref} is replaced, e.g. "
                        "'skopeo inspect --tls-verify=false docker://{ref}'")
    p.add_argument("--dry-run", action="store_true", help="print the plan, verify the bundle, write nothing")
    p.add_argument("--no-rollback", action="store_true",
                   help="leave the tag on the new image when the verification pull fails")
    p.add_argument("--always-verify", action="store_true",
                   help="pull and verify even when nothing changed since a verified patch of the tag")
    _add_state_options(p)
    _add_s3_options(p)

    r = sub.add_parser("rollback", help="point a tag back at its previous image",
                       description="Point REPOSITORY:TAG at the digest it had before the last change "
                                   "(from history) or at --to DIGEST, after checking that image is complete; "
                                   "then verify by pulling.")
    r.add_argument("--repository", required=True, metavar="NAME")
    r.add_argument("--tag", required=True)
    r.add_argument("--to", metavar="DIGEST", help="sha256:... of an image of the repository")
    _add_target_options(r)
    r.add_argument("--restart", default="none", metavar="SPEC", help="as for patch")
    r.add_argument("--verify-command", metavar="CMD", help="as for patch")
    _add_state_options(r)

    h = sub.add_parser("history", help="print every recorded tag change",
                       description="Print the tag changes regpatch recorded in a registry's storage.")
    h.add_argument("--storage", metavar="ROOT", help="the registry's rootdirectory")
    h.add_argument("--registry-config", metavar="CONFIG_YML", help="or the registry's config.yml")
    h.add_argument("--repository", metavar="NAME")
    h.add_argument("--tag")
    h.add_argument("--json", action="store_true", help="one JSON object per line")
    h.add_argument("--state-dir", metavar="DIR", help="regpatch's state folder (default ROOT/.regpatch)")
    _add_rollout_parser(sub)
    _add_inspect_parser(sub)
    return parser


def _add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show what a bundle holds (format, images, platforms, blobs)",
                       description="Show what BUNDLE holds: its format, images and platforms (with "
                                   "os.version), manifest digests, blobs with sizes and which are foreign, "
                                   "total bytes. Reads names, manifests and configs only; --verify hashes "
                                   "every blob. Writes nothing.")
    p.add_argument("bundle", metavar="BUNDLE",
                   help="a folder, an archive (.tar, .tar.gz, .tar.zst, ...), or s3://bucket/prefix")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument("--verify", action="store_true", help="hash every blob of the bundle")
    p.add_argument("--image", metavar="NAME",
                   help="only this image (OCI ref name, or a RepoTag of a docker save archive)")
    _add_s3_options(p)


def run_inspect(args: argparse.Namespace) -> int:
    """Reads the bundle only: no Prefect import, no registry."""
    from .bundle.inspect import inspect_bundle
    from .bundle.source import open_source

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="regpatch: %(levelname)s: %(message)s", stream=sys.stderr)
    options = None
    if args.bundle.startswith("s3://"):
        if args.aws_credentials_block:
            from tasks.s3_support import s3_options  # imports prefect-aws only for the block

            options = s3_options(**{k[3:] if k.startswith("s3_") else k: v for k, v in _s3_kwargs(args).items()})
        else:
            from .bundle.s3 import S3Options

            options = S3Options(endpoint_url=args.s3_endpoint_url, region=args.s3_region,
                                retries=args.s3_retries, wait_initial=args.s3_wait_initial,
                                wait_max=args.s3_wait_max, cache_dir=args.cache_dir,
                                concurrency=args.s3_concurrency, part_size=args.s3_part_size << 20)
    progress = None
    if args.verify and not args.json:
        from .progress import Progress

        progress = Progress()
    info = inspect_bundle(open_source(args.bundle, s3=options), image=args.image, verify=args.verify,
                          progress=progress)
    sys.stdout.write((info.to_json() if args.json else info.render()) + "\n")
    return 0


def _add_rollout_parser(sub) -> None:
    p = sub.add_parser("rollout", help="apply a patch bundle to every registry of an inventory",
                       description="Roll BUNDLE out to REPOSITORY:TAG on the registries of an inventory: "
                                   "groups run as waves, registries of a wave in parallel; registries "
                                   "that finished in an earlier run are skipped.")
    p.add_argument("bundle", metavar="BUNDLE", help="staged folder or OCI layout folder")
    p.add_argument("--inventory", required=True, metavar="FILE", help="inventory YAML file")
    p.add_argument("--repository", required=True, metavar="NAME")
    p.add_argument("--tag", required=True)
    p.add_argument("--only", action="append", metavar="NAMES",
                   help="only these registries (comma-separated; may be repeated)")
    p.add_argument("--max-parallel", type=int, default=4, metavar="N",
                   help="registries patched at once within a wave (default 4)")
    p.add_argument("--dry-run", action="store_true", help="plan and verify everywhere, write nothing")
    p.add_argument("--state-dir", metavar="DIR",
                   help="folder of the rollout state file (default: .regpatch-rollouts beside the inventory)")
    p.add_argument("--image", metavar="NAME", help="image of an OCI layout, by its ref.name annotation")
    p.add_argument("--verify-command", metavar="CMD",
                   help="external puller run after each patch, {ref} is replaced")


def _quiet_tracebacks() -> None:
    """Expected errors are shown as one line: drop their tracebacks from the run logs.

    Only for the CLI without --debug; flows run by workers keep full tracebacks.
    """

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], RegpatchError):
                record.exc_info = None
                record.exc_text = None
            return True

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).addFilter(_Filter())


def _prepare_environment(debug: bool) -> None:
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "regpatch")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    if debug:
        os.environ["PREFECT_LOGGING_LEVEL"] = "DEBUG"


def run_patch(args: argparse.Namespace):
    from flows.patch import patch_registry

    result = patch_registry(
        bundle=args.bundle, repository=args.repository, tag=args.tag, storage=args.storage,
        registry_url=args.registry_url, registry_config=args.registry_config, restart=args.restart,
        image=args.image, verify_command=args.verify_command, dry_run=args.dry_run,
        registry_auth_file=args.registry_auth_file, registry_ca=args.registry_ca, insecure=args.insecure,
        state_dir=args.state_dir, lock_timeout=args.lock_timeout, rollback_on_failure=not args.no_rollback,
        always_verify=args.always_verify, **_s3_kwargs(args))
    out = sys.stdout
    if result.dry_run:
        out.write(result.plan_text + "\ndry run: nothing was written\n")
    elif not result.changed:
        out.write(f"{result.repository}:{result.tag} already at {result.new}: nothing to do\n")
    else:
        out.write(f"patched {result.repository}:{result.tag}: {result.old or '(new tag)'} -> {result.new}; "
                  f"{len(result.blobs_copied)} blobs copied ({result.bytes_copied:,} B), "
                  f"{len(result.blobs_skipped)} skipped, {len(result.links_written)} links written\n")
    if result.verified:
        out.write(f"verified: {result.verified}\n")
    return result


def run_rollout(args: argparse.Namespace):
    from flows.rollout import rollout
    from regpatch.inventory import load_inventory
    from regpatch.rollout import RolloutFailed, render_table

    load_inventory(args.inventory)  # an invalid inventory fails here, before any flow run
    only = [n.strip() for v in (args.only or []) for n in v.split(",") if n.strip()] or None
    try:
        outcomes = rollout(bundle=args.bundle, inventory=args.inventory, repository=args.repository,
                           tag=args.tag, only=only, max_parallel=args.max_parallel, dry_run=args.dry_run,
                           state_dir=args.state_dir, image=args.image, verify_command=args.verify_command)
    except RolloutFailed as e:
        sys.stdout.write(render_table(e.outcomes))
        raise
    sys.stdout.write(render_table(outcomes))
    sys.stdout.write(f"rollout of {args.repository}:{args.tag}: all {len(outcomes)} registries ok"
                     f"{' (dry run)' if args.dry_run else ''}\n")
    return outcomes


def run_rollback(args: argparse.Namespace):
    from flows.rollback import rollback_registry

    result = rollback_registry(
        repository=args.repository, tag=args.tag, storage=args.storage, to=args.to,
        registry_url=args.registry_url, registry_config=args.registry_config, restart=args.restart,
        verify_command=args.verify_command, registry_auth_file=args.registry_auth_file,
        registry_ca=args.registry_ca, insecure=args.insecure, state_dir=args.state_dir,
        lock_timeout=args.lock_timeout)
    verb = "rolled back" if result.changed else "already at"
    sys.stdout.write(f"{verb} {result.repository}:{result.tag}: {result.old or '(no tag)'} -> {result.new}\n")
    if result.verified:
        sys.stdout.write(f"verified: {result.verified}\n")
    return result


def run_history(args: argparse.Namespace) -> None:
    """Reads the state folder only: no Prefect run."""
    import json
    from dataclasses import asdict

    from .layout import Layout
    from .registry_config import storage_root_from_config
    from .state import read_history, render_history

    root = args.storage or (storage_root_from_config(args.registry_config) if args.registry_config else None)
    if not root:
        from .errors import UsageError
        raise UsageError("pass --storage ROOT or --registry-config config.yml")
    from pathlib import Path

    layout = Layout(Path(root), Path(args.state_dir) if args.state_dir else None)
    entries = read_history(layout, args.repository, args.tag)
    if args.json:
        for e in entries:
            sys.stdout.write(json.dumps(asdict(e)) + "\n")
    else:
        sys.stdout.write(render_history(entries) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _prepare_environment(args.debug)
    try:
        if args.command == "history":
            run_history(args)
            return 0
        if args.command == "inspect":
            return run_inspect(args)
        import flows  # noqa: F401  (imports Prefect, which sets up logging)

        if not args.debug:
            _quiet_tracebacks()
        if args.command == "patch":
            run_patch(args)
        elif args.command == "rollback":
            run_rollback(args)
        elif args.command == "rollout":
            run_rollout(args)
        return 0
    except RegpatchError as e:
        if args.debug:
            raise
        print(f"regpatch: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("regpatch: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        if args.debug:
            raise
        print(f"regpatch: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
