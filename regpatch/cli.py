"""regpatch command line: parses, checks, runs the engine (or its flow), maps errors to exit codes.

Every argument is checked before Prefect is imported. Without a Prefect API
(``PREFECT_API_URL`` or the active profile) ``patch`` and ``rollback`` run the
engine here and never start a temporary server; with one, they run the flow
there, visible in the UI. SIGINT/SIGTERM stop a run at the next chunk boundary
(``regpatch.interrupt``) with exit 130/143.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from . import interrupt
from .errors import Interrupted, RegpatchError, UsageError, os_error


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
    p.add_argument("--registry-name", metavar="NAME",
                   help="short name of the registry (e.g. site-a) for Prefect run names, tags and artifact "
                        "keys; default: the host name and the storage folder")


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
    p.add_argument("--always-verify", action="store_true",
                   help="pull and verify even when nothing changed since a verified patch of the tag")
    p.add_argument("--local", action="store_true",
                   help="run here without Prefect even when a Prefect API is configured")
    p.add_argument("--consume", action="store_true",
                   help="take the bundle's layer files instead of copying them: each is renamed into the "
                        "storage (same filesystem only) and verified there; the bundle folder keeps a note "
                        "(regpatch-consumed.jsonl) of what was taken")
    p.add_argument("--trust-key", action="append", default=[], metavar="PUB",
                   help="PEM public key (Ed25519 / P-256; repeatable): the bundle must be signed by one of "
                        "them, match its regpatch-bundle.json and find its base blobs in the storage, "
                        "checked before anything is staged")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="with --trust-key: accept a bundle without signature (a wrong one is refused)")
    p.add_argument("--ignore-url-policy", action="store_true",
                   help="patch even when the registry's own rules (validation.manifests.urls of its "
                        "config.yml) would refuse the manifest's foreign-layer URLs on a push")
    p.add_argument("--allow-cross-repository", action="store_true",
                   help="let the image link blobs that other repositories hold but the bundle does not "
                        "carry (by default refused: it would expose another repository's layers)")
    p.add_argument("--init", action="store_true",
                   help="create docker/registry/v2 if the storage has none (a new registry); "
                        "without it such a storage is refused as a likely typo")
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
    r.add_argument("--local", action="store_true", help="as for patch")
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
    _add_deployments_parser(sub)
    _add_shuttle_parsers(sub)
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
        s3 = _s3_params(args)
        if s3.aws_credentials_block:  # a Prefect block: imports Prefect (and prefect-aws) only for it
            from tasks.observer import s3_options_for

            options = s3_options_for(args.bundle, s3)
        else:
            options = s3.options()
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
                                   "are checked again on a re-run (nothing is written where the bundle is complete), "
                                   "except those rolled back since.")
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
    p.add_argument("--local", action="store_true",
                   help="run here without Prefect even when a Prefect API is configured")


def _add_deployments_parser(sub) -> None:
    p = sub.add_parser("deployments", help="per-registry Prefect deployments from an inventory",
                       description="For every registry of the inventory, the deployments patch-registry/NAME, "
                                   "rollback-registry/NAME and registry-history/NAME on its work pool, with the "
                                   "registry (storage, config, URL, restart...) stored as their parameters: a run "
                                   "from the UI needs only the bundle, the repository and the tag. Prints them "
                                   "as a prefect.yaml; --apply creates or updates them on the Prefect API.")
    p.add_argument("--inventory", required=True, metavar="FILE", help="inventory YAML file")
    p.add_argument("--only", action="append", metavar="NAMES",
                   help="only these registries (comma-separated; may be repeated)")
    p.add_argument("--repository", metavar="NAME", help="prefill the repository of the patch and rollback forms")
    p.add_argument("--default-pool", default="regpatch", metavar="POOL",
                   help="work pool of registries without a work_pool (default regpatch: where the rollout runs)")
    p.add_argument("--output", metavar="FILE", help="write the prefect.yaml here instead of printing it")
    p.add_argument("--apply", action="store_true",
                   help="create or update the deployments (and missing process work pools) on the Prefect API")


def run_deployments(args: argparse.Namespace) -> None:
    """Plain data from the inventory; Prefect is imported only with --apply."""
    from .deployments import render_prefect_yaml, specs_for
    from .inventory import load_inventory
    from .params import refuse_inline_credentials
    from .reference import Repository

    if args.repository:
        Repository.parse(args.repository)
    only = _only_names(args)
    inventory = load_inventory(args.inventory)
    for e in inventory.select(only):  # deployment parameters are stored in Prefect's database
        refuse_inline_credentials(f"inventory entry {e.name!r} verify_command", e.verify_command)
        refuse_inline_credentials(f"inventory entry {e.name!r} url", e.url)
        refuse_inline_credentials(f"inventory entry {e.name!r} restart", e.restart)
    specs = specs_for(inventory, default_pool=args.default_pool, repository=args.repository, only=only)
    text = render_prefect_yaml(specs, args.inventory)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        sys.stdout.write(f"wrote {len(specs)} deployments to {args.output}\n")
    elif not args.apply:
        sys.stdout.write(text)
    if args.apply:
        api = configured_prefect_api()
        if not api:
            raise UsageError("--apply needs a Prefect API: set PREFECT_API_URL (e.g. http://HOST:4200/api)")
        _check_prefect_api(api)
        from tasks.deploy import apply

        for line in apply(specs):
            sys.stdout.write(line + "\n")


def _quiet_tracebacks(debug: bool) -> None:
    """Runs on a Prefect API: expected errors are one line in the run logs (Prefect logs
    a traceback per failed task and flow run otherwise); --debug keeps them."""
    if debug:
        return

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


# --------------------------------------------------------------------------- where a run goes

def configured_prefect_api() -> Optional[str]:
    """The Prefect API this process would use, read without importing Prefect:
    ``PREFECT_API_URL``, else the active profile's (``PREFECT_PROFILE`` or the
    profiles file's ``active``). None: no API, the run goes straight to the engine."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url.strip() or None
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        import tomllib

        data = tomllib.loads(path.read_text())
    except (OSError, ValueError, ImportError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    profile = (data.get("profiles") or {}).get(active) if active else None
    value = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _check_prefect_api(url: str) -> None:
    """One request before Prefect is imported: an unreachable API fails at once."""
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5.0)
    except httpx.HTTPError as e:
        raise UsageError(f"the Prefect API at {url} does not answer ({type(e).__name__}); start the "
                         "server (prefect server start), or run without Prefect: unset PREFECT_API_URL "
                         "or pass --local") from None
    _skip_final_gc()  # this process is about to import Prefect and run a flow


_FINAL_GC_SKIPPED = False


def _skip_final_gc() -> None:
    """At the very end of a process that imported Prefect and ran a flow, the interpreter's
    last garbage collection walks a heap of a few hundred thousand objects: about 0.5 s
    after everything is done (bench/startup.py). Freezing the heap in an exit handler
    skips that walk and nothing else: every exit handler still runs (Prefect's, which
    drain its log and event workers, are registered later and run before this one)."""
    global _FINAL_GC_SKIPPED
    if not _FINAL_GC_SKIPPED:
        import atexit
        import gc

        atexit.register(gc.freeze)
        _FINAL_GC_SKIPPED = True


def _only_names(args: argparse.Namespace) -> Optional[list[str]]:
    """The registry names of ``--only`` (comma-separated, repeatable; spaces around a name
    are dropped, nothing else is); None when ``--only`` is not given. Given, it must name
    at least one registry: an empty ``--only ""`` never means the whole fleet."""
    if args.only is None:
        return None
    names = [n.strip(" ") for v in args.only for n in v.split(",") if n.strip(" ")]
    if not names:
        raise UsageError("--only names no registry; give the names of the registries to patch, "
                         "or leave --only out for all of them")
    return names


def _use_prefect(args: argparse.Namespace) -> Optional[str]:
    if getattr(args, "local", False):
        return None
    return configured_prefect_api()


# --------------------------------------------------------------------------- patch

def _registry_params(args: argparse.Namespace):
    from .params import RegistryParams

    if not math.isfinite(args.lock_timeout) or args.lock_timeout < 0:
        raise UsageError(f"--lock-timeout must be a finite number of seconds >= 0, not {args.lock_timeout}")
    from .params import REGISTRY_NAME_RE

    if args.registry_name is not None and not REGISTRY_NAME_RE.fullmatch(args.registry_name):
        raise UsageError(f"--registry-name {args.registry_name!r} must be 1-63 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return RegistryParams(name=args.registry_name, storage=args.storage, registry_config=args.registry_config,
                          registry_url=args.registry_url, restart=args.restart,
                          registry_auth_file=args.registry_auth_file, registry_ca=args.registry_ca,
                          insecure=args.insecure, state_dir=args.state_dir, lock_timeout=args.lock_timeout,
                          init=getattr(args, "init", False),
                          ignore_url_policy=getattr(args, "ignore_url_policy", False),
                          allow_cross_repository=getattr(args, "allow_cross_repository", False))


def _s3_params(args: argparse.Namespace):
    from .params import S3Params

    return S3Params(endpoint_url=args.s3_endpoint_url, region=args.s3_region,
                    aws_credentials_block=args.aws_credentials_block, cache_dir=args.cache_dir,
                    retries=args.s3_retries, wait_initial=args.s3_wait_initial, wait_max=args.s3_wait_max,
                    concurrency=args.s3_concurrency, part_size_mib=args.s3_part_size)


def run_patch(args: argparse.Namespace):
    """Validate everything, then run the engine here, or the patch-registry flow on
    the configured Prefect API (after a plan made here: a bad bundle never becomes a run)."""
    from .reference import Repository, Tag

    Repository.parse(args.repository), Tag.parse(args.tag)  # the commonest typo fails before any import
    from . import engine
    from .params import TrustParams, VerifyParams, patch_request, refuse_inline_credentials

    registry, verify, s3 = _registry_params(args), VerifyParams(command=args.verify_command,
                                                                always=args.always_verify), _s3_params(args)
    trust = TrustParams(trust_keys=[str(Path(k).absolute()) for k in args.trust_key],
                        allow_unsigned=args.allow_unsigned)
    api = _use_prefect(args)
    is_s3 = args.bundle.startswith("s3://")
    if is_s3 and s3.aws_credentials_block and not api:
        raise UsageError("--aws-credentials-block names a Prefect block: it needs a Prefect API "
                         "(PREFECT_API_URL); without one, give the credentials through boto3's chain "
                         "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE)")
    s3_options = s3.options() if is_s3 and not s3.aws_credentials_block else None
    request = patch_request(bundle=args.bundle, repository=args.repository, tag=args.tag, registry=registry,
                            verify=verify, image=args.image, dry_run=args.dry_run, s3=s3_options,
                            consume=args.consume, trust=trust)
    if api:
        refuse_inline_credentials("--verify-command", args.verify_command)
        refuse_inline_credentials("--restart", args.restart)
        _check_prefect_api(api)
        if s3_options is not None or not is_s3:
            engine.preflight(request)
        from flows.patch import patch_registry

        result = patch_registry(bundle=args.bundle, repository=args.repository, tag=args.tag,
                                registry=registry, verify=verify, s3=s3, image=args.image,
                                dry_run=args.dry_run, consume=args.consume, trust=trust)
    else:
        result = engine.patch(request)
    out = sys.stdout
    if result.dry_run:
        out.write(result.plan_text + "\n")
    for note in result.notes:
        out.write(f"note: {note}\n")
    out.write(result.summary_line() + "\n")
    if result.verified:
        out.write(f"verified: {result.verified}\n")
    return result


def run_rollout(args: argparse.Namespace):
    """Without a Prefect API the rollout runs here (registries patched by this process);
    registries on a work pool need the API, which runs their patch on their own host."""
    from .engine import open_bundle
    from .inventory import load_inventory
    from .params import refuse_inline_credentials
    from .reference import Repository, Tag
    from .rollout import MAX_PARALLEL, RolloutFailed, RolloutState, engine_patcher, render_table, run_rollout

    Repository.parse(args.repository)
    Tag.parse(args.tag)
    if not 1 <= args.max_parallel <= MAX_PARALLEL:
        raise UsageError(f"--max-parallel must be between 1 and {MAX_PARALLEL}, not {args.max_parallel}")
    if args.verify_command is not None and "{ref}" not in args.verify_command:
        raise UsageError("the verify command must contain {ref}, where the image reference goes")
    inventory = load_inventory(args.inventory)  # an invalid inventory fails here, before anything runs
    only = _only_names(args)
    entries = inventory.select(only)
    api = _use_prefect(args)
    pooled = [e.name for e in entries if e.work_pool]
    if pooled and not api:
        raise UsageError(f"registries {', '.join(pooled)} have a work_pool: their patches run on their own "
                         "hosts through a Prefect API; set PREFECT_API_URL (or use --only for the others)")
    try:
        if api:
            refuse_inline_credentials("--verify-command", args.verify_command)
            for e in entries:
                refuse_inline_credentials(f"inventory entry {e.name!r} verify_command", e.verify_command)
                refuse_inline_credentials(f"inventory entry {e.name!r} restart", e.restart)
            _check_prefect_api(api)
            from flows.rollout import rollout

            outcomes = rollout(bundle=args.bundle, inventory=args.inventory, repository=args.repository,
                               tag=args.tag, only=only, max_parallel=args.max_parallel, dry_run=args.dry_run,
                               state_dir=args.state_dir, image=args.image, verify_command=args.verify_command)
        else:
            digest = str(open_bundle(args.bundle, image=args.image).top.digest)
            state = RolloutState(Path(args.state_dir) if args.state_dir else RolloutState.default_dir(
                Path(args.inventory)), args.repository, args.tag, digest)
            patch_one = engine_patcher(bundle=args.bundle, repository=args.repository, tag=args.tag,
                                       image=args.image, verify_command=args.verify_command,
                                       dry_run=args.dry_run)
            outcomes = run_rollout(entries, patch_one, state=state, max_parallel=args.max_parallel,
                                   dry_run=args.dry_run)
            if any(o.failed or o.status == "not-run" for o in outcomes):
                raise RolloutFailed(outcomes)
    except RolloutFailed as e:
        sys.stdout.write(render_table(e.outcomes))
        raise
    sys.stdout.write(render_table(outcomes))
    sys.stdout.write(f"rollout of {args.repository}:{args.tag}: all {len(outcomes)} registries ok"
                     f"{' (dry run)' if args.dry_run else ''}\n")
    return outcomes


def run_rollback(args: argparse.Namespace):
    from . import engine
    from .params import VerifyParams, refuse_inline_credentials, rollback_request

    registry, verify = _registry_params(args), VerifyParams(command=args.verify_command)
    request = rollback_request(repository=args.repository, tag=args.tag, registry=registry, to=args.to,
                               verify=verify)
    api = _use_prefect(args)
    if api:
        refuse_inline_credentials("--verify-command", args.verify_command)
        refuse_inline_credentials("--restart", args.restart)
        _check_prefect_api(api)
        from flows.rollback import rollback_registry

        result = rollback_registry(repository=args.repository, tag=args.tag, to=args.to, registry=registry,
                                   verify=verify)
    else:
        result = engine.rollback(request)
    sys.stdout.write(result.summary_line() + "\n")
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


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{self.formatTime(record, '%H:%M:%S')} {prefix}{record.getMessage()}"


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_ConsoleFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _console_logging(debug: bool) -> None:
    """The core's log lines on stderr for runs without Prefect (Prefect has its own)."""
    core = logging.getLogger("regpatch")
    if not any(isinstance(h, _ConsoleHandler) for h in core.handlers):
        core.addHandler(_ConsoleHandler())
    core.setLevel(logging.DEBUG if debug else logging.INFO)


# --------------------------------------------------------------------------- the shuttle side
# contents (site), bundle (connected side), keygen, check-bundle (site): no Prefect run.

def _add_shuttle_parsers(sub) -> None:
    c = sub.add_parser("contents", help="write what a registry's storage holds, for 'bundle --have'",
                       description="Write a small deterministic JSON of the blobs (digest, size) and, per "
                                   "repository, the tags and manifest revisions of a registry's storage. "
                                   "Reads only.")
    c.add_argument("--storage", metavar="ROOT", help="the registry's rootdirectory")
    c.add_argument("--registry-config", metavar="CONFIG_YML", help="or the registry's config.yml")
    c.add_argument("--repository", action="append", metavar="NAME",
                   help="only these repositories' tags and revisions (repeatable); blobs are always all")
    c.add_argument("--out", required=True, metavar="FILE", help="the contents file to write ('-': stdout)")

    b = sub.add_parser("bundle", help="make a (delta, signed) bundle of an image",
                       description="Write SOURCE's image as an OCI image layout to DEST, leaving out the "
                                   "configs and layers the --have contents files list, with "
                                   "regpatch-bundle.json and, with --sign-key, its signature.")
    b.add_argument("source", metavar="SOURCE",
                   help="docker://HOST[:PORT]/REPO:TAG (or @sha256:...), an OCI layout folder (oci:PATH), "
                        "or a dir: / staged folder")
    b.add_argument("--out", required=True, metavar="DEST", help="a new or empty folder, or s3://bucket/prefix")
    b.add_argument("--have", action="append", default=[], metavar="FILE",
                   help="a contents file of the target site (repeatable): its blobs are not carried")
    b.add_argument("--sign-key", metavar="KEY",
                   help="PEM private key (Ed25519 or P-256) to sign regpatch-bundle.json; an encrypted "
                        "key is opened with $REGPATCH_SIGN_KEY_PASSWORD")
    b.add_argument("--image", metavar="NAME", help="image of an OCI layout SOURCE, by its ref.name")
    b.add_argument("--platform", metavar="OS/ARCH[/VARIANT][:OSVERSION]",
                   help="take only this platform's manifest of a multi-platform index (default: the "
                        "whole index)")
    b.add_argument("--repository", metavar="NAME",
                   help="repository the bundle is meant for (default: that of a docker:// SOURCE)")
    b.add_argument("--tag", help="tag the bundle is meant for (default: that of a docker:// SOURCE)")
    b.add_argument("--registry-auth-file", metavar="FILE",
                   help="docker config.json with credentials for the source registry")
    b.add_argument("--registry-ca", metavar="PEM", help="CA bundle for the source registry's TLS certificate")
    b.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP / skip TLS verification of the source registry")
    g = b.add_argument_group("S3 destination (DEST = s3://bucket/prefix)")
    g.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint; default $AWS_ENDPOINT_URL")
    g.add_argument("--s3-region", metavar="REGION", help="region (default: boto3's, else us-east-1)")
    g.add_argument("--s3-retries", type=int, default=5, metavar="N",
                   help="retries of each S3 call on transient faults (default 5)")
    g.add_argument("--s3-part-size", type=int, default=8, metavar="MIB",
                   help="multipart upload part size in MiB (default 8, at least 5)")

    k = sub.add_parser("keygen", help="make a key pair to sign bundles",
                       description="Write PREFIX.key (PKCS#8 PEM, mode 0600; encrypted when "
                                   "$REGPATCH_SIGN_KEY_PASSWORD is set) and PREFIX.pub. Never overwrites.")
    k.add_argument("--out", required=True, metavar="PREFIX")
    k.add_argument("--algorithm", choices=("ed25519", "p256"), default="ed25519",
                   help="ed25519 (default) or p256 (ECDSA P-256)")

    v = sub.add_parser("check-bundle", help="check a bundle's signature, listing and base before a patch",
                       description="What 'patch --trust-key' checks before anything is staged: the "
                                   "signature, that regpatch-bundle.json describes the bundle, and that "
                                   "the blobs it assumes present are in the registry storage. Reads only.")
    v.add_argument("bundle", metavar="BUNDLE", help="bundle folder or s3://bucket/prefix")
    v.add_argument("--storage", metavar="ROOT", help="the registry's rootdirectory")
    v.add_argument("--registry-config", metavar="CONFIG_YML", help="or the registry's config.yml")
    v.add_argument("--trust-key", action="append", default=[], metavar="PUB",
                   help="PEM public key whose signatures are trusted (repeatable)")
    v.add_argument("--allow-unsigned", action="store_true",
                   help="accept a bundle without signature even though trust keys are given")
    v.add_argument("--state-dir", metavar="DIR", help="regpatch's state folder (default ROOT/.regpatch)")
    v.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint; default $AWS_ENDPOINT_URL")
    v.add_argument("--s3-region", metavar="REGION", help="region (default: boto3's, else us-east-1)")


def _storage_root(args) -> str:
    from .registry_config import storage_root_from_config

    root = args.storage or (storage_root_from_config(args.registry_config) if args.registry_config else None)
    if not root:
        from .errors import UsageError
        raise UsageError("pass --storage ROOT or --registry-config config.yml")
    return str(root)


def run_contents(args: argparse.Namespace) -> None:
    from .contents import read_storage, write_contents
    from .store import RegistryStore

    store = RegistryStore(_storage_root(args))
    contents = read_storage(store, args.repository)
    digest = write_contents(contents, args.out, storage_root=store.root)
    if args.out != "-":
        sys.stdout.write(f"wrote {args.out}: {contents.summary()}; sha256 {digest.hex}\n")


def run_bundle(args: argparse.Namespace) -> None:
    from .progress import Progress
    from .shuttle import RegistryOptions, make_bundle

    s3 = None
    if args.out.startswith("s3://"):
        from .bundle.s3 import S3Options

        if args.s3_part_size < 5:
            from .errors import UsageError
            raise UsageError("--s3-part-size must be at least 5 MiB (the S3 minimum part size)")
        s3 = S3Options(endpoint_url=args.s3_endpoint_url, region=args.s3_region, retries=args.s3_retries,
                       part_size=args.s3_part_size << 20)
    report = make_bundle(args.source, args.out, have=args.have, sign_key=args.sign_key, image=args.image,
                         platform=args.platform, repository=args.repository, tag=args.tag,
                         registry=RegistryOptions(args.registry_auth_file, args.registry_ca, args.insecure),
                         s3=s3, progress=Progress())
    sys.stdout.write(report.summary() + "\n")


def run_keygen(args: argparse.Namespace) -> None:
    from .signing import algorithm_name, fingerprint, generate_keypair, load_public_key

    key_path, pub_path = generate_keypair(args.out, args.algorithm)
    pub = load_public_key(pub_path)
    sys.stdout.write(f"wrote {key_path} (private, 0600) and {pub_path} (public): "
                     f"{algorithm_name(pub)} {fingerprint(pub)}\n")


def run_check_bundle(args: argparse.Namespace) -> None:
    from .bundle.source import open_source
    from .signing import check_bundle
    from .store import RegistryStore

    s3 = None
    if args.bundle.startswith("s3://"):
        from .bundle.s3 import S3Options

        s3 = S3Options(endpoint_url=args.s3_endpoint_url, region=args.s3_region)
    store = RegistryStore(_storage_root(args), state_dir=args.state_dir)
    trust = check_bundle(open_source(args.bundle, s3=s3), args.trust_key, args.allow_unsigned, store)
    sys.stdout.write(trust.summary() + "\n")


SHUTTLE_COMMANDS = {"contents": run_contents, "bundle": run_bundle, "keygen": run_keygen,
                    "check-bundle": run_check_bundle}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _prepare_environment(args.debug)
    interrupt.install_handlers()
    try:
        if args.command == "history":
            run_history(args)
            return 0
        if args.command == "deployments":
            run_deployments(args)
            return 0
        if args.command == "inspect":
            return run_inspect(args)
        if args.command in SHUTTLE_COMMANDS:  # no Prefect: plain core calls
            _console_logging(args.debug)
            SHUTTLE_COMMANDS[args.command](args)
            return 0
        if not _use_prefect(args):
            _console_logging(args.debug)
        else:
            _quiet_tracebacks(args.debug)
        if args.command == "patch":
            run_patch(args)
        elif args.command == "rollback":
            run_rollback(args)
        elif args.command == "rollout":
            run_rollout(args)
        return 0
    except RegpatchError as e:
        if args.debug:
            traceback.print_exc()
        print(f"regpatch: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # one the core did not map itself: the same mapping, one line
        if interrupt.stopping():
            return _interrupted(args.debug)
        if args.debug:
            traceback.print_exc()
        err = os_error(e, doing="accessing")
        print(f"regpatch: error: {err}", file=sys.stderr)
        return err.exit_code
    except BaseException:  # KeyboardInterrupt, or an orchestrator's own signal exception
        if interrupt.stopping() or sys.exc_info()[0] is KeyboardInterrupt:
            return _interrupted(args.debug)
        raise


def _interrupted(debug: bool) -> int:
    if debug:
        traceback.print_exc()
    err = Interrupted(interrupt.signal_number() or signal.SIGINT)
    print(f"regpatch: error: {err}", file=sys.stderr)
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
