"""The local stack's S3 buckets across `down` / `up`: moto's server keeps objects in memory only, so
`down` saves every bucket's objects under $BFN_HOME/stack/s3/ and `up` loads them back."""
from __future__ import annotations

import hashlib
import json
import shutil

from bfn_platform.stack_state import BUCKET, REGION, Stack
from pipelines import names as N

def _s3(stack: Stack):
    import boto3

    creds = stack.s3_credentials()
    return boto3.client("s3", endpoint_url=stack.s3_url, region_name=REGION,
                        aws_access_key_id=creds[N.ENV_AWS_ACCESS_KEY_ID],
                        aws_secret_access_key=creds[N.ENV_AWS_SECRET_ACCESS_KEY])


def save_buckets(stack: Stack) -> int:
    """Every object of every bucket to stack/s3/BUCKET/{index.json, blobs/}; swapped in atomically."""
    client = _s3(stack)
    new = stack.snapshot_dir.with_name("s3.new")
    shutil.rmtree(new, ignore_errors=True)
    count = 0
    for bucket in client.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        blobs = new / name / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        index = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                blob = hashlib.sha256(key.encode()).hexdigest()
                client.download_file(name, key, str(blobs / blob))
                index[key] = blob
                count += 1
        (new / name / "index.json").write_text(json.dumps(index))
    old = stack.snapshot_dir.with_name("s3.old")
    shutil.rmtree(old, ignore_errors=True)
    if stack.snapshot_dir.exists():
        stack.snapshot_dir.rename(old)
    new.rename(stack.snapshot_dir)
    shutil.rmtree(old, ignore_errors=True)
    return count


def restore_buckets(stack: Stack) -> int:
    """Create the default bucket and load every saved bucket back into a freshly started server."""
    client = _s3(stack)
    names = {BUCKET}
    if stack.snapshot_dir.exists():
        names |= {p.name for p in stack.snapshot_dir.iterdir() if (p / "index.json").exists()}
    count = 0
    for name in sorted(names):
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        folder = stack.snapshot_dir / name
        if not (folder / "index.json").exists():
            continue
        for key, blob in json.loads((folder / "index.json").read_text()).items():
            client.upload_file(str(folder / "blobs" / blob), name, key)
            count += 1
    return count
