"""The shuttle side's commands (``contents``, ``bundle``, ``keygen``, ``check-bundle``)
and ``inspect``: plain core calls, no Prefect run."""

from __future__ import annotations

import argparse
import logging
import sys

from regpatch.cli.options import model_of
from regpatch.cli.parser import STATE_ONLY
from regpatch.cli.prefect_api import prefect_side
from regpatch.cli.registry_commands import storage_root
from regpatch.errors import UsageError
from regpatch.options import REGISTRY, S3, TRUST, opt
from regpatch.params import RegistryParams, S3Params, TrustParams


def run_inspect(args: argparse.Namespace) -> int:
    """Reads the bundle only: no Prefect import, no registry."""
    from regpatch.bundle.inspect import inspect_bundle  # only this command needs it (start-up)
    from regpatch.bundle.open import open_source  # only this command needs it (start-up)

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="regpatch: %(levelname)s: %(message)s", stream=sys.stderr)
    options = None
    if args.bundle.startswith("s3://"):
        s3 = model_of(S3Params, S3, args)
        if s3.aws_credentials_block:  # a Prefect block: imports Prefect (and prefect-aws) only for it
            options = prefect_side().s3_options_for(args.bundle, s3)
        else:
            options = s3.options()
    progress = None
    if args.verify and not args.json:
        from regpatch.progress import Progress  # only this command needs it (start-up)

        progress = Progress()
    info = inspect_bundle(open_source(args.bundle, s3=options), image=args.image, verify=args.verify,
                          progress=progress)
    sys.stdout.write((info.to_json() if args.json else info.render()) + "\n")
    return 0


def run_contents(args: argparse.Namespace) -> None:
    from regpatch.storage.contents import read_storage, write_contents  # only this command needs it (start-up)
    from regpatch.storage.store import RegistryStore  # only this command needs it (start-up)

    store = RegistryStore(storage_root(args))
    contents = read_storage(store, args.repository)
    digest = write_contents(contents, args.out, storage_root=store.root)
    if args.out != "-":
        sys.stdout.write(f"wrote {args.out}: {contents.summary()}; sha256 {digest.hex}\n")


def run_bundle(args: argparse.Namespace) -> None:
    from regpatch.progress import Progress  # only this command needs it (start-up)
    from regpatch.shuttle.make import make_bundle  # only this command needs it (start-up)
    from regpatch.shuttle.sources import RegistryOptions  # only this command needs it (start-up)

    source = model_of(RegistryParams, REGISTRY, args, only=("registry_auth_file", "registry_ca", "insecure"))
    s3params = model_of(S3Params, S3, args, only=("endpoint_url", "region", "retries", "part_size_mib"))
    s3 = None
    if args.out.startswith("s3://"):
        if s3params.part_size_mib < 5:
            raise UsageError(f"{opt.s3_part_size} must be at least 5 MiB (the S3 minimum part size)")
        s3 = s3params.options()
    report = make_bundle(args.source, args.out, have=args.have, sign_key=args.sign_key, image=args.image,
                         platform=args.platform, repository=args.repository, tag=args.tag,
                         registry=RegistryOptions(source.registry_auth_file, source.registry_ca, source.insecure),
                         s3=s3, progress=Progress())
    sys.stdout.write(report.summary() + "\n")


def run_keygen(args: argparse.Namespace) -> None:
    from regpatch.signing.keys import (  # only this command needs it (start-up)
        algorithm_name,
        fingerprint,
        generate_keypair,
        load_public_key,
    )

    key_path, pub_path = generate_keypair(args.out, args.algorithm)
    pub = load_public_key(pub_path)
    sys.stdout.write(f"wrote {key_path} (private: its owner only) and {pub_path} (public): "
                     f"{algorithm_name(pub)} {fingerprint(pub)}\n")


def run_check_bundle(args: argparse.Namespace) -> None:
    from regpatch.bundle.open import open_source  # only this command needs it (start-up)
    from regpatch.signing.check import check_bundle  # only this command needs it (start-up)
    from regpatch.storage.store import RegistryStore  # only this command needs it (start-up)

    s3 = None
    if args.bundle.startswith("s3://"):
        s3 = model_of(S3Params, S3, args, only=("endpoint_url", "region")).options()
    trust = model_of(TrustParams, TRUST, args)
    state = model_of(RegistryParams, REGISTRY, args, only=STATE_ONLY)
    store = RegistryStore(storage_root(args), state_dir=state.state_dir)
    result = check_bundle(open_source(args.bundle, s3=s3), trust.trust_keys, trust.allow_unsigned, store)
    _check_replay(result, store, trust.allow_downgrade)
    sys.stdout.write(result.summary() + "\n")


def _check_replay(result, store, allow_downgrade: bool) -> None:
    """The patch's replay check, for the repository and tag the bundle was made for."""
    from regpatch.errors import InvalidReference, OlderBundle  # only this command needs them (start-up)
    from regpatch.reference import Repository, Tag  # (ditto)
    from regpatch.signing.replay import replay_refusal  # (ditto)

    desc = result.descriptor
    if desc is None or not desc.repository or not desc.tag:
        return
    try:
        repo, tag = Repository.parse(desc.repository), Tag.parse(desc.tag)
    except InvalidReference:
        return
    why = replay_refusal(result, store, repo, tag, store.current_tag(repo, tag))
    if why and not allow_downgrade:
        raise OlderBundle(why)
    if why:
        sys.stdout.write(f"warning: {why.split(': an older signed bundle')[0]}: accepted ({opt.allow_downgrade})\n")
