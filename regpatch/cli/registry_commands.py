"""regpatch.cli.registry_commands"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from regpatch.cli.prefect_api import _check_prefect_api, _use_prefect, prefect_side
from regpatch.errors import UsageError


def _registry_params(args: argparse.Namespace):
    from regpatch.params import RegistryParams

    if not math.isfinite(args.lock_timeout) or args.lock_timeout < 0:
        raise UsageError(f"--lock-timeout must be a finite number of seconds >= 0, not {args.lock_timeout}")
    from regpatch.params import REGISTRY_NAME_RE

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
    from regpatch.params import S3Params

    return S3Params(endpoint_url=args.s3_endpoint_url, region=args.s3_region,
                    aws_credentials_block=args.aws_credentials_block, cache_dir=args.cache_dir,
                    retries=args.s3_retries, wait_initial=args.s3_wait_initial, wait_max=args.s3_wait_max,
                    concurrency=args.s3_concurrency, part_size_mib=args.s3_part_size)



def run_patch(args: argparse.Namespace):
    """Validate everything, then run the engine here, or the patch-registry flow on
    the configured Prefect API (after a plan made here: a bad bundle never becomes a run)."""
    from regpatch.reference import Repository, Tag

    Repository.parse(args.repository), Tag.parse(args.tag)  # the commonest typo fails before any import
    from regpatch import engine
    from regpatch.params import TrustParams, VerifyParams, patch_request, refuse_inline_credentials

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
        patch_registry = prefect_side().patch_registry

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



def run_rollback(args: argparse.Namespace):
    from regpatch import engine
    from regpatch.params import VerifyParams, refuse_inline_credentials, rollback_request

    registry, verify = _registry_params(args), VerifyParams(command=args.verify_command)
    request = rollback_request(repository=args.repository, tag=args.tag, registry=registry, to=args.to,
                               verify=verify)
    api = _use_prefect(args)
    if api:
        refuse_inline_credentials("--verify-command", args.verify_command)
        refuse_inline_credentials("--restart", args.restart)
        _check_prefect_api(api)
        rollback_registry = prefect_side().rollback_registry

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

    from regpatch.registry.config import storage_root_from_config
    from regpatch.storage.history import read_history, render_history
    from regpatch.storage.layout import Layout

    root = args.storage or (storage_root_from_config(args.registry_config) if args.registry_config else None)
    if not root:
        from regpatch.errors import UsageError
        raise UsageError("pass --storage ROOT or --registry-config config.yml")
    from pathlib import Path

    layout = Layout(Path(root), Path(args.state_dir) if args.state_dir else None)
    entries = read_history(layout, args.repository, args.tag)
    if args.json:
        for e in entries:
            sys.stdout.write(json.dumps(asdict(e)) + "\n")
    else:
        sys.stdout.write(render_history(entries) + "\n")

