"""A throwaway S3-compatible server for tests: moto's server (``moto[server]``) on a free local
port, one bucket, stopped when the block ends."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from tests.servers import free_port, running, wait_until_serving


def available() -> str | None:
    """Why no server can start here, or None when one can."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        return "moto[server] not installed (pip install -e '.[test]')"
    return None


@contextlib.contextmanager
def server(bucket: str = "dsel") -> Iterator[dict[str, str]]:
    """Yield the environment a client needs (endpoint, region, credentials) with ``bucket`` made."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]) as process:
        wait_until_serving(f"{endpoint}/moto-api/", process, "moto server", timeout=60)
        environ = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
        }
        client = s3_client(environ)
        client.create_bucket(Bucket=bucket)
        yield environ


def s3_client(environ: dict[str, str]):
    """A boto3 S3 client for the server whose environment is ``environ``."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=environ["AWS_ENDPOINT_URL"],
        region_name=environ["AWS_REGION"],
        aws_access_key_id=environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environ["AWS_SECRET_ACCESS_KEY"],
    )
