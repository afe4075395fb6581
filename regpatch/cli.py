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
                   help="staged folder or OCI layout folder")
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
    return parser


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
        registry_auth_file=args.registry_auth_file, registry_ca=args.registry_ca, insecure=args.insecure)
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _prepare_environment(args.debug)
    try:
        import flows  # noqa: F401  (imports Prefect, which sets up logging)

        if not args.debug:
            _quiet_tracebacks()
        if args.command == "patch":
            run_patch(args)
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
