"""The local stack's S3 store (bfn_platform.s3_server) as a real process: no acknowledged object is lost
to `kill -9`, requests need our key pair's SigV4 signature, moto's control API is closed, and the old
`bfn stack down` snapshot is imported once."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from services import free_port, stop_process_group, wait_http

pytestmark = pytest.mark.integration

KEY_ID, SECRET = "AKIDBFNLOCALTEST", "s3cret/for+tests=ok"
MiB = 1024 * 1024


@contextmanager
def s3_store(tmp_path: Path, data: Path, *extra: str):
    """The store as a child process (own session) on a free port; stopped, or already killed, afterwards."""
    creds = tmp_path / "s3-credentials.json"
    creds.write_text(json.dumps({"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}))
    creds.chmod(0o600)
    port = free_port()
    log = tmp_path / f"s3-{port}.log"
    cmd = [sys.executable, "-m", "bfn_platform.s3_server", "--port", str(port), "--data", str(data),
           "--credentials", str(creds), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/_bfn/health", 60, proc, log)
        yield SimpleNamespace(url=url, proc=proc, log=log, health=lambda: json.loads(urllib.request.urlopen(url + "/_bfn/health").read()))
    finally:
        stop_process_group(proc)
    assert SECRET not in log.read_text()


def client(url: str, key_id: str = KEY_ID, secret: str = SECRET, **config):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key_id,
                        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}, **config))


def arrow_fs(url: str, secret: str = SECRET):
    from pyarrow import fs

    return fs.S3FileSystem(endpoint_override=url.removeprefix("http://"), scheme="http", access_key=KEY_ID,
                           secret_key=secret, region="us-east-1")


def error_code(call) -> str:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["Error"]["Code"]


def test_kill_9_loses_no_acknowledged_object(tmp_path):
    data = tmp_path / "data"
    want: dict[tuple[str, str], tuple[bytes, str, dict]] = {}  # (bucket, key) -> bytes, content type, metadata
    with s3_store(tmp_path, data) as store:
        s3 = client(store.url)
        for i in range(24):
            body = os.urandom(i * 997)
            kind = ("text/plain", {"i": str(i), "kind": "small"}) if i % 2 else ("application/x-bfn", {})
            key = f"runs/{i:02d}/ckpt é+ {i}.bin"
            s3.put_object(Bucket="bfn", Key=key, Body=body, ContentType=kind[0], Metadata=kind[1])
            want["bfn", key] = (body, kind[0], kind[1])
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(9 * MiB + 123))
        s3.upload_file(str(big), "bfn", "models/big.pt")  # multipart: over boto3's 8 MiB threshold
        want["bfn", "models/big.pt"] = (big.read_bytes(), "binary/octet-stream", {})
        s3.copy_object(Bucket="bfn", Key="copies/big.pt", CopySource={"Bucket": "bfn", "Key": "models/big.pt"})
        want["bfn", "copies/big.pt"] = want["bfn", "models/big.pt"]
        s3.copy_object(Bucket="bfn", Key="copies/01", CopySource={"Bucket": "bfn", "Key": "runs/01/ckpt é+ 1.bin"})
        want["bfn", "copies/01"] = want["bfn", "runs/01/ckpt é+ 1.bin"]
        s3.copy_object(Bucket="bfn", Key="copies/03-new-meta", CopySource={"Bucket": "bfn", "Key": "runs/03/ckpt é+ 3.bin"},
                       MetadataDirective="REPLACE", ContentType="application/json", Metadata={"replaced": "yes"})
        want["bfn", "copies/03-new-meta"] = (want["bfn", "runs/03/ckpt é+ 3.bin"][0], "application/json", {"replaced": "yes"})
        s3.create_bucket(Bucket="other")
        for i in range(3):
            s3.put_object(Bucket="other", Key=f"o/{i}", Body=b"x" * i)
            want["other", f"o/{i}"] = (b"x" * i, "binary/octet-stream", {})
        with ThreadPoolExecutor(6) as pool:  # concurrent writers
            bodies = {f"par/{i}": os.urandom(5000 + i) for i in range(6)}
            list(pool.map(lambda kv: s3.put_object(Bucket="bfn", Key=kv[0], Body=kv[1]), bodies.items()))
            want.update({("bfn", k): (v, "binary/octet-stream", {}) for k, v in bodies.items()})
        s3.put_object(Bucket="bfn", Key="runs/00/ckpt é+ 0.bin", Body=b"overwritten", ContentType="text/x-new")
        want["bfn", "runs/00/ckpt é+ 0.bin"] = (b"overwritten", "text/x-new", {})
        for i in (5, 6, 7):
            s3.delete_object(Bucket="bfn", Key=f"runs/{i:02d}/ckpt é+ {i}.bin")
            del want["bfn", f"runs/{i:02d}/ckpt é+ {i}.bin"]
        gone = [f"runs/{i:02d}/ckpt é+ {i}.bin" for i in (8, 9, 10, 11)] + ["par/2"]
        assert not s3.delete_objects(Bucket="bfn", Delete={"Objects": [{"Key": k} for k in gone]}).get("Errors")
        for k in gone:
            del want["bfn", k]
        arrow = arrow_fs(store.url)
        for i, size in enumerate((10, 3 * MiB)):
            payload = os.urandom(size)
            with arrow.open_output_stream(f"bfn/arrow/part-{i}.parquet", metadata={"Content-Type": "application/x-parquet"}) as out:
                out.write(payload)
            want["bfn", f"arrow/part-{i}.parquet"] = (payload, "application/x-parquet", {})
        s3.put_object(Bucket="other", Key="last", Body=b"the last acknowledged write")
        want["other", "last"] = (b"the last acknowledged write", "binary/octet-stream", {})
        os.killpg(store.proc.pid, signal.SIGKILL)  # right after the last acknowledgement
        store.proc.wait(10)

    with s3_store(tmp_path, data) as store:
        s3 = client(store.url)
        assert store.health() == {"objects": len(want), "buckets": ["bfn", "other"], "data": str(data.resolve())}
        found = {(b, o["Key"]) for b in ("bfn", "other")
                 for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b) for o in page.get("Contents", [])}
        assert found == set(want)
        for (bucket, key), (body, content_type, metadata) in want.items():
            got = s3.get_object(Bucket=bucket, Key=key)
            assert hashlib.sha256(got["Body"].read()).digest() == hashlib.sha256(body).digest(), key
            assert (got["ContentType"], got["Metadata"]) == (content_type, metadata), key
        with arrow_fs(store.url).open_input_stream("bfn/arrow/part-1.parquet") as f:
            assert f.read() == want["bfn", "arrow/part-1.parquet"][0]


def test_credentials_are_checked_and_moto_api_is_closed(tmp_path):
    with s3_store(tmp_path, tmp_path / "data") as store:
        s3 = client(store.url)
        s3.put_object(Bucket="bfn", Key="kept", Body=b"precious")
        assert error_code(lambda: client(store.url, secret="wrong").get_object(Bucket="bfn", Key="kept")) == "SignatureDoesNotMatch"
        assert error_code(lambda: client(store.url, secret="wrong").put_object(Bucket="bfn", Key="x", Body=b"1")) == "SignatureDoesNotMatch"
        assert error_code(lambda: client(store.url, key_id="AKIDSOMEONEELSE").list_objects_v2(Bucket="bfn")) == "InvalidAccessKeyId"
        assert error_code(lambda: client(store.url, key_id="AKIDSOMEONEELSE").delete_object(Bucket="bfn", Key="kept")) == "InvalidAccessKeyId"
        from botocore import UNSIGNED

        assert error_code(lambda: client(store.url, signature_version=UNSIGNED).get_object(Bucket="bfn", Key="kept")) == "AccessDenied"
        assert error_code(lambda: client(store.url, secret="wrong").head_object(Bucket="bfn", Key="kept")) == "403"
        with pytest.raises(urllib.error.HTTPError) as info:  # no Authorization header at all
            urllib.request.urlopen(urllib.request.Request(store.url + "/bfn/kept", method="DELETE"))
        assert info.value.code == 403 and b"<Code>AccessDenied</Code>" in info.value.read()
        for path in ("/moto-api/reset", "/moto-api/data.json"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(urllib.request.Request(store.url + path, data=b"", method="POST"))
            assert info.value.code in (403, 404)
        presigned = client(store.url, signature_version="s3v4").generate_presigned_url("get_object", Params={"Bucket": "bfn", "Key": "kept"})
        assert urllib.request.urlopen(presigned).read() == b"precious"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(presigned.replace("/bfn/kept?", "/bfn/x?"))
        assert info.value.code == 403
        with pytest.raises(OSError):
            arrow_fs(store.url, secret="wrong").open_input_stream("bfn/kept").read()
        assert not [k for k in s3.list_objects_v2(Bucket="bfn").get("Contents", []) if k["Key"] != "kept"]
        assert s3.get_object(Bucket="bfn", Key="kept")["Body"].read() == b"precious"  # moto-api/reset did nothing

        # pyarrow finding the keys in a shared credentials file, none in its environment
        shared = tmp_path / "aws-credentials"
        shared.write_text(f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_SHARED_CREDENTIALS_FILE=str(shared), AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
        script = ("import sys; from pyarrow import fs\n"
                  f"s3 = fs.S3FileSystem(endpoint_override={store.url.removeprefix('http://')!r}, scheme='http', region='us-east-1')\n"
                  "with s3.open_output_stream('bfn/from-shared-file') as f: f.write(b'shared ok')\n"
                  "sys.stdout.write(s3.open_input_stream('bfn/kept').read().decode())\n")
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout == "precious", done.stderr[-2000:]
        assert s3.get_object(Bucket="bfn", Key="from-shared-file")["Body"].read() == b"shared ok"


def test_old_snapshot_is_imported_once(tmp_path):
    old = tmp_path / "stack" / "s3"
    objects = {("bfn", "data/manifest.json"): b'{"shards": 3}', ("bfn", "ckpt/ünï cödé.pt"): os.urandom(70000),
               ("extra", "a/b/c"): b"", ("extra", "x"): b"x" * 10}
    for (bucket, key), body in objects.items():
        blob = hashlib.sha256(key.encode()).hexdigest()
        (old / bucket / "blobs").mkdir(parents=True, exist_ok=True)
        (old / bucket / "blobs" / blob).write_bytes(body)
        index = old / bucket / "index.json"
        index.write_text(json.dumps({**(json.loads(index.read_text()) if index.exists() else {}), key: blob}))
    data = tmp_path / "stack" / "s3-store"
    with s3_store(tmp_path, data, "--import-snapshot", str(old)) as store:
        assert store.health()["objects"] == len(objects) and store.health()["buckets"] == ["bfn", "extra"]
        s3 = client(store.url)
        for (bucket, key), body in objects.items():
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        s3.delete_object(Bucket="extra", Key="x")
    with s3_store(tmp_path, data, "--import-snapshot", str(old)) as store:  # not imported again
        assert store.health()["objects"] == len(objects) - 1
        assert error_code(lambda: client(store.url).head_object(Bucket="extra", Key="x")) == "404"
