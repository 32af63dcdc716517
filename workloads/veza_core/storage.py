"""Object storage over the S3 API (AWS S3, MinIO, or any S3-compatible endpoint).

boto3 is synchronous, so every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

# Files go up in parts of 8 MiB, two at a time: an upload holds about 16 MiB however large the file.
FILE_TRANSFER = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024,
                               max_concurrency=2, use_threads=True)


class ObjectStore:
    def __init__(self, bucket: str, *, endpoint_url: str | None = None, region: str = "us-east-1",
                 access_key: str | None = None, secret_key: str | None = None) -> None:
        self.bucket = bucket
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=3, read_timeout=30,
                          max_pool_connections=32),
        )

    async def ensure_bucket(self) -> None:
        def create() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError:
                self.client.create_bucket(Bucket=self.bucket)

        await asyncio.to_thread(create)

    async def put(self, key: str, body: bytes, content_type: str = "application/octet-stream",
                  **metadata: str) -> None:
        await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=key, Body=body,
                                ContentType=content_type, Metadata=metadata)

    async def put_file(self, key: str, source: str | BinaryIO, content_type: str = "application/octet-stream",
                       **metadata: str) -> None:
        """Upload a local file (a path, or a file open for reading, sent from its start) without reading it
        whole into memory: multipart above 8 MiB, two parts at a time."""
        extra = {"ContentType": content_type, "Metadata": metadata}
        if isinstance(source, str):
            await asyncio.to_thread(self.client.upload_file, source, self.bucket, key, Config=FILE_TRANSFER,
                                    ExtraArgs=extra)
            return
        source.seek(0)
        await asyncio.to_thread(self.client.upload_fileobj, source, self.bucket, key, Config=FILE_TRANSFER,
                                ExtraArgs=extra)

    async def get(self, key: str) -> bytes:
        def read() -> bytes:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

        return await asyncio.to_thread(read)

    async def get_file(self, key: str, path: str) -> None:
        """Download an object to a local file without holding it in memory."""
        await asyncio.to_thread(self.client.download_file, self.bucket, key, path, Config=FILE_TRANSFER)

    async def head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=key)

    async def list(self, prefix: str = "") -> list[str]:
        def keys() -> list[str]:
            found: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                found.extend(obj["Key"] for obj in page.get("Contents", []))
            return found

        return await asyncio.to_thread(keys)

    async def ready(self) -> bool:
        try:
            await asyncio.to_thread(self.client.head_bucket, Bucket=self.bucket)
            return True
        except Exception:
            return False
