"""A real S3 server on loopback for the object-store tests (tests/basis, tests/workflow).

:class:`S3Server` runs ``moto_server`` (moto[server], the S3 HTTP protocol as botocore speaks
it) on 127.0.0.1 and a free port, with authentication on: the first three requests create an
IAM user, its access key and an allow-all policy; every later request must be signed with that
key, so wrong credentials fail as they would on AWS or MinIO.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1", containing: str | None = None) -> int:
    """A port free on ``host`` now; with ``containing``, the first such port whose number
    has those digits in it."""
    if containing is None:
        with socket.socket() as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    for port in (p for p in range(1024, 65536) if containing in str(p)):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port with {containing!r} in it on {host}")


class S3Server:
    """``moto_server`` on 127.0.0.1 with authentication; ``env`` holds valid credentials."""

    def __init__(self, log: Path, host: str = "127.0.0.1") -> None:
        self.port = free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        env = {
            **os.environ,
            "INITIAL_NO_AUTH_ACTION_COUNT": "3",  # IAM user, key and policy; then auth is on
            "MOTO_ALLOW_NONEXISTENT_REGION": "true",
        }
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*cmd, "-H", host, "-p", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait()
        self.key_id, self.secret = self._make_user()
        self.env = {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _wait(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def _make_user(self) -> tuple[str, str]:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name="us-east-1",
        )
        iam.create_user(UserName="se3t")
        key = iam.create_access_key(UserName="se3t")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="se3t", PolicyName="all", PolicyDocument=json.dumps(policy))
        return key["AccessKeyId"], key["SecretAccessKey"]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def keys(server: S3Server, bucket: str, prefix: str) -> dict[str, int]:
    """Object keys under ``prefix`` -> size, straight from the server."""
    out: dict[str, int] = {}
    for page in (
        server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    ):
        for o in page.get("Contents", []) or []:
            out[o["Key"]] = o["Size"]
    return out
