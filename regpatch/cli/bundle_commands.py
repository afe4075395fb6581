"""regpatch.cli.bundle_commands"""

from __future__ import annotations

import argparse
import logging
import sys

from regpatch.cli.prefect_api import prefect_side
from regpatch.cli.registry_commands import _s3_params


def run_inspect(args: argparse.Namespace) -> int:
    """Reads the bundle only: no Prefect import, no registry."""
    from regpatch.bundle.inspect import inspect_bundle
    from regpatch.bundle.open import open_source

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="regpatch: %(levelname)s: %(message)s", stream=sys.stderr)
    options = None
    if args.bundle.startswith("s3://"):
        s3 = _s3_params(args)
        if s3.aws_credentials_block:  # a Prefect block: imports Prefect (and prefect-aws) only for it
            s3_options_for = prefect_side().s3_options_for

            options = s3_options_for(args.bundle, s3)
        else:
            options = s3.options()
    progress = None
    if args.verify and not args.json:
        from regpatch.progress import Progress

        progress = Progress()
    info = inspect_bundle(open_source(args.bundle, s3=options), image=args.image, verify=args.verify,
                          progress=progress)
    sys.stdout.write((info.to_json() if args.json else info.render()) + "\n")
    return 0



def _storage_root(args) -> str:
    from regpatch.registry.config import storage_root_from_config

    root = args.storage or (storage_root_from_config(args.registry_config) if args.registry_config else None)
    if not root:
        from regpatch.errors import UsageError
        raise UsageError("pass --storage ROOT or --registry-config config.yml")
    return str(root)



def run_contents(args: argparse.Namespace) -> None:
    from regpatch.storage.contents import read_storage, write_contents
    from regpatch.storage.store import RegistryStore

    store = RegistryStore(_storage_root(args))
    contents = read_storage(store, args.repository)
    digest = write_contents(contents, args.out, storage_root=store.root)
    if args.out != "-":
        sys.stdout.write(f"wrote {args.out}: {contents.summary()}; sha256 {digest.hex}\n")



def run_bundle(args: argparse.Namespace) -> None:
    from regpatch.progress import Progress
    from regpatch.shuttle.make import make_bundle
    from regpatch.shuttle.sources import RegistryOptions

    s3 = None
    if args.out.startswith("s3://"):
        from regpatch.bundle.s3 import S3Options

        if args.s3_part_size < 5:
            from regpatch.errors import UsageError
            raise UsageError("--s3-part-size must be at least 5 MiB (the S3 minimum part size)")
        s3 = S3Options(endpoint_url=args.s3_endpoint_url, region=args.s3_region, retries=args.s3_retries,
                       part_size=args.s3_part_size << 20)
    report = make_bundle(args.source, args.out, have=args.have, sign_key=args.sign_key, image=args.image,
                         platform=args.platform, repository=args.repository, tag=args.tag,
                         registry=RegistryOptions(args.registry_auth_file, args.registry_ca, args.insecure),
                         s3=s3, progress=Progress())
    sys.stdout.write(report.summary() + "\n")



def run_keygen(args: argparse.Namespace) -> None:
    from regpatch.signing.keys import algorithm_name, fingerprint, generate_keypair, load_public_key

    key_path, pub_path = generate_keypair(args.out, args.algorithm)
    pub = load_public_key(pub_path)
    sys.stdout.write(f"wrote {key_path} (private, 0600) and {pub_path} (public): "
                     f"{algorithm_name(pub)} {fingerprint(pub)}\n")



def run_check_bundle(args: argparse.Namespace) -> None:
    from regpatch.bundle.open import open_source
    from regpatch.signing.check import check_bundle
    from regpatch.storage.store import RegistryStore

    s3 = None
    if args.bundle.startswith("s3://"):
        from regpatch.bundle.s3 import S3Options

        s3 = S3Options(endpoint_url=args.s3_endpoint_url, region=args.s3_region)
    store = RegistryStore(_storage_root(args), state_dir=args.state_dir)
    trust = check_bundle(open_source(args.bundle, s3=s3), args.trust_key, args.allow_unsigned, store)
    sys.stdout.write(trust.summary() + "\n")

