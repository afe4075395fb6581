"""S3 settings for the tasks: plain flow parameters -> ``S3Options``.

The optional Prefect ``AwsCredentials`` block (prefect-aws) is looked up here,
inside the task that opens the bundle, so its secret never travels as a flow
or task parameter and the core never imports Prefect.
"""

from __future__ import annotations

from typing import Optional

from regpatch.bundle.s3 import S3Credentials, S3Options
from regpatch.errors import SourceError, UsageError


def load_aws_credentials_block(name: str) -> tuple[S3Credentials, Optional[str]]:
    """The credentials (and region) of a saved prefect-aws ``AwsCredentials`` block."""
    try:
        from prefect_aws import AwsCredentials  # optional dependency: pip install 'regpatch[aws]'
    except ImportError:
        raise UsageError(f"--aws-credentials-block {name!r} needs the prefect-aws package, which is "
                         "not installed; install it with: pip install 'regpatch[aws]' (or "
                         "'pip install prefect-aws'), or use boto3's default credentials "
                         "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role)"
                         ) from None
    try:
        block = AwsCredentials.load(name)
    except ValueError:
        raise UsageError(f"no AwsCredentials block named {name!r} on the Prefect API; create it "
                         "in the UI (Blocks) or with AwsCredentials(...).save(name)") from None
    secret = block.aws_secret_access_key.get_secret_value() if block.aws_secret_access_key else None
    try:
        creds = S3Credentials(access_key_id=block.aws_access_key_id, secret_access_key=secret,
                              session_token=block.aws_session_token, profile_name=block.profile_name)
    except Exception:
        raise SourceError(f"AwsCredentials block {name!r} is unusable") from None
    return creds, block.region_name


def s3_options(*, endpoint_url: Optional[str] = None, region: Optional[str] = None,
               aws_credentials_block: Optional[str] = None, cache_dir: Optional[str] = None,
               retries: int = 5, wait_initial: float = 0.5, wait_max: float = 20.0,
               concurrency: int = 4, part_size_mib: int = 8) -> S3Options:
    credentials = None
    if aws_credentials_block:
        credentials, block_region = load_aws_credentials_block(aws_credentials_block)
        region = region or block_region
    opts = S3Options(endpoint_url=endpoint_url or None, region=region or None, retries=retries,
                     wait_initial=wait_initial, wait_max=wait_max, cache_dir=cache_dir or None,
                     concurrency=concurrency, part_size=int(part_size_mib) << 20, credentials=credentials)
    opts.check()
    return opts
