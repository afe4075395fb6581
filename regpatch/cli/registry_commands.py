"""``regpatch patch``, ``rollback`` and ``history``: one registry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regpatch.cli.options import change_of, model_of
from regpatch.cli.parser import HARDENING, STATE_ONLY
from regpatch.cli.prefect_api import _check_prefect_api, _use_prefect, prefect_side
from regpatch.errors import UsageError
from regpatch.options import REGISTRY, S3, TRUST, VERIFY, opt
from regpatch.params import RegistryParams, S3Params, TrustParams, VerifyParams, refuse_inline_credentials
from regpatch.reference import Repository, Tag


def run_patch(args: argparse.Namespace):
    """Validate everything, then run the engine here, or the patch-registry flow on
    the configured Prefect API (after a plan made here: a bad bundle never becomes a run)."""
    Repository.parse(args.repository), Tag.parse(args.tag)  # the commonest typo fails before any import
    from regpatch import engine  # only this command needs it (start-up)
    from regpatch.engine.requests import patch_request  # only this command needs it (start-up)

    registry, verify = model_of(RegistryParams, REGISTRY, args), model_of(VerifyParams, VERIFY, args)
    s3 = model_of(S3Params, S3, args)
    trust = model_of(TrustParams, TRUST, args)
    trust = trust.model_copy(update={"trust_keys": [str(Path(k).absolute()) for k in trust.trust_keys]})
    change = change_of(args)
    api = _use_prefect(args)
    is_s3 = args.bundle.startswith("s3://")
    if is_s3 and s3.aws_credentials_block and not api:
        raise UsageError(f"{opt.aws_credentials_block} names a Prefect block: it needs a Prefect API "
                         "(PREFECT_API_URL); without one, give the credentials through boto3's chain "
                         "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE)")
    s3_options = s3.options() if is_s3 and not s3.aws_credentials_block else None
    request = patch_request(bundle=args.bundle, repository=args.repository, tag=args.tag, registry=registry,
                            verify=verify, image=args.image, dry_run=args.dry_run, s3=s3_options,
                            consume=args.consume, trust=trust, change=change)
    if api:
        refuse_inline_credentials(opt.verify_command, verify.command)
        refuse_inline_credentials(opt.restart, registry.restart)
        _check_prefect_api(api)
        if s3_options is not None or not is_s3:
            engine.preflight(request)
        result = prefect_side().patch_registry(bundle=args.bundle, repository=args.repository, tag=args.tag,
                                               registry=registry, verify=verify, s3=s3, image=args.image,
                                               dry_run=args.dry_run, consume=args.consume, trust=trust,
                                               change=change)
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
    from regpatch import engine  # only this command needs it (start-up)
    from regpatch.engine.requests import rollback_request  # only this command needs it (start-up)

    registry = model_of(RegistryParams, REGISTRY, args, exclude=HARDENING)
    verify = model_of(VerifyParams, VERIFY, args, only=("command",))
    change = change_of(args)
    request = rollback_request(repository=args.repository, tag=args.tag, registry=registry, to=args.to,
                               verify=verify, change=change)
    api = _use_prefect(args)
    if api:
        refuse_inline_credentials(opt.verify_command, verify.command)
        refuse_inline_credentials(opt.restart, registry.restart)
        _check_prefect_api(api)
        result = prefect_side().rollback_registry(repository=args.repository, tag=args.tag, to=args.to,
                                                  registry=registry, verify=verify, change=change)
    else:
        result = engine.rollback(request)
    sys.stdout.write(result.summary_line() + "\n")
    if result.verified:
        sys.stdout.write(f"verified: {result.verified}\n")
    return result


def storage_root(args: argparse.Namespace) -> str:
    """The storage folder of a command that reads it only: given, or from the config.yml."""
    from regpatch.registry.config import storage_root_from_config  # only this command needs it (start-up)

    registry = model_of(RegistryParams, REGISTRY, args, only=STATE_ONLY)
    root = registry.storage or (storage_root_from_config(registry.registry_config)
                                if registry.registry_config else None)
    if not root:
        raise UsageError(f"pass {opt.storage} ROOT or {opt.registry_config} config.yml")
    return str(root)


def run_history(args: argparse.Namespace) -> None:
    """Reads the state folder only: no Prefect run."""
    from regpatch.storage.history import read_history, render_history  # only this command needs it (start-up)
    from regpatch.storage.layout import Layout  # only this command needs it (start-up)

    state_dir = getattr(args, "state_dir", None)
    layout = Layout(Path(storage_root(args)), Path(state_dir) if state_dir else None)
    entries = read_history(layout, args.repository, args.tag)
    if args.json:
        for e in entries:
            sys.stdout.write(e.to_json() + "\n")
    else:
        sys.stdout.write(render_history(entries) + "\n")
