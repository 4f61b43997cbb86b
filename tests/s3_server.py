"""A real S3 API server (moto's) on 127.0.0.1 for the object-store tests, and its bucket.

Credentials and the endpoint reach s3fs (and Ray workers started afterwards, which inherit the
environment) the standard way, through ``AWS_*`` variables: curate never takes them as
arguments. Nothing here listens beyond loopback.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from unittest import mock

import pytest


@contextmanager
def s3_server():
    """Start the server, point the ``AWS_*`` environment at it; yields the endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-never-logged",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    try:
        with mock.patch.dict(os.environ, env):  # restored (or removed) on exit
            yield endpoint
    finally:
        server.stop()


def new_bucket() -> str:
    """Create a fresh bucket on the current endpoint; returns its ``s3://`` URL."""
    import s3fs

    name = f"curate-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"
