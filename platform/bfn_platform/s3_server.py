"""The local stack's S3 store: moto's S3 behind credential checks and write-through persistence.

Why our own: moto's server (`python -m moto.server`) keeps every object in memory, so a killed
process loses everything written since the last snapshot, and it accepts any credentials; no
pip-installable persistent S3 server fits. This serves moto's S3 WSGI app behind a middleware that
checks AWS Signature V4 (Authorization header or presigned query) against one key pair,
recomputing the signature with botocore's signer, and that writes the effect of every successful
mutation under --data (bfn_platform.s3_store: temporary file, fsync, os.replace, directory fsync)
before the response leaves, so an acknowledged object survives `kill -9`. On start --data is loaded
back into moto.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import io
import ipaddress
import json
import os
import re
import signal
import socket
import sys
import threading
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from bfn_platform.s3_store import REGION, Store

HEALTH_PATH = "/_bfn/health"
MAX_SKEW_S = 15 * 60
_AUTH = re.compile(r"AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]+)\s*$")


class UsageError(Exception):
    """A bad argument or setting, said in one line."""


def _header(environ: dict, name: str) -> str:
    special = {"host": "HTTP_HOST", "content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
    return environ.get(special.get(name, "HTTP_" + name.upper().replace("-", "_")), "")


def _raw_path(environ: dict) -> str:
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", ""))
    path = urlsplit(raw).path if "://" in raw else raw.split("?", 1)[0]
    return path if path.startswith("/") else "/" + path


def _query_pairs(query: str) -> list[tuple[str, str]]:
    return [(unquote(k), unquote(v)) for k, _, v in (p.partition("=") for p in query.split("&") if p)]


class SigV4Check:
    """Accept a request only when it carries a valid SigV4 signature made with our key pair."""

    def __init__(self, key_id: str, secret: str):
        self.key_id, self.secret = key_id, secret

    def __call__(self, environ: dict) -> tuple[str, str] | None:
        """None when the request is properly signed, else (S3 error code, message)."""
        query = environ.get("QUERY_STRING", "")
        pairs, auth = _query_pairs(query), environ.get("HTTP_AUTHORIZATION", "")
        params = dict(pairs)
        if auth:
            if not (match := _AUTH.match(auth)):
                return "AccessDenied", "Only AWS Signature Version 4 is accepted."
            credential, signed, signature = match.groups()
            stamp, expires = environ.get("HTTP_X_AMZ_DATE", ""), None
            payload = environ.get("HTTP_X_AMZ_CONTENT_SHA256") or hashlib.sha256(b"").hexdigest()
        elif params.get("X-Amz-Algorithm") == "AWS4-HMAC-SHA256" and "X-Amz-Signature" in params:
            credential, signed, signature, stamp, expires = (params.get(f"X-Amz-{k}", "") for k in
                                                             ("Credential", "SignedHeaders", "Signature", "Date", "Expires"))
            payload, pairs = "UNSIGNED-PAYLOAD", [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
            query = "&".join(p for p in query.split("&") if not p.startswith("X-Amz-Signature="))
        else:
            return "AccessDenied", "Access Denied: the request is not signed."
        scope = credential.split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            return "AccessDenied", "Malformed credential scope."
        if not hmac.compare_digest(scope[0].encode(), self.key_id.encode()):
            return "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
        from moto.utilities.utils import get_partition

        if get_partition(scope[2]) != "aws":  # moto would keep it in another backend, which we do not persist
            return "AccessDenied", f"Region {scope[2]} is not served here."
        try:
            when = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
            age = (dt.datetime.now(dt.timezone.utc) - when).total_seconds()
            late = age > (int(expires) if expires is not None else MAX_SKEW_S)
        except ValueError:
            return "AccessDenied", "Missing or malformed X-Amz-Date or X-Amz-Expires."
        if late or age < -MAX_SKEW_S:
            return "AccessDenied", "The request has expired or its time is too far from the server's."
        for candidate in self._signatures(environ, pairs, query, signed, stamp, payload, scope[2], scope[3]):
            if hmac.compare_digest(candidate, signature):
                return None
        return "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided."

    def _signatures(self, environ, pairs, query, signed, stamp, payload, region, service):
        """botocore's signature for each plausible canonical form of path and query (as sent, re-encoded)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest, HTTPHeaders
        from botocore.credentials import Credentials

        chosen = HTTPHeaders()
        for name in filter(None, (n.strip().lower() for n in signed.split(";"))):
            chosen[name] = _header(environ, name)

        class Signer(S3SigV4Auth):
            def headers_to_sign(self, request):
                return chosen  # exactly the SignedHeaders, with the values received

        signer, raw = Signer(Credentials(self.key_id, self.secret), service, region), _raw_path(environ)
        for path in dict.fromkeys([raw, quote(unquote(raw), safe="/~")]):
            for by_params in (True, False):
                request = AWSRequest(method=environ["REQUEST_METHOD"], url=f"http://s3{path}" + ("" if by_params else f"?{query}"),
                                     headers={"X-Amz-Content-SHA256": payload})
                request.params, request.context["timestamp"] = (pairs if by_params else {}), stamp
                yield signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)


class App:
    """WSGI middleware around moto's S3 app: health, auth, then moto with write-through persistence."""

    def __init__(self, moto_app, store: Store, check: SigV4Check):
        self.moto, self.store, self.check = moto_app, store, check

    def __call__(self, environ, start_response):
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == HEALTH_PATH:
            with self.store.lock:
                body = {"objects": sum(map(len, self.store.index.values())), "buckets": sorted(self.store.index),
                        "data": str(self.store.root)}
            return _reply(start_response, "200 OK", json.dumps(body).encode(), "application/json")
        if path.startswith("/moto-api"):
            return _error(start_response, method, "AccessDenied", "moto's control API is disabled here.")
        environ.pop("HTTP_X_MOTO_ACCOUNT_ID", None)  # one account only
        if refused := self.check(environ):
            return _error(start_response, method, *refused)
        if (persist := self._plan(environ, method)) is None:
            return self.moto(environ, start_response)
        started, chunks = [], []

        def hold(status, headers, exc_info=None):  # the response waits until the change is on disk
            started[:] = [status, headers]
            return chunks.append

        with self.store.lock:  # the mutation and its write to disk, one at a time
            result = self.moto(environ, hold)
            try:
                chunks.extend(result)
            finally:
                getattr(result, "close", lambda: None)()
            if started[0][:1] == "2":
                try:
                    persist()
                except OSError as exc:
                    return _error(start_response, method, "InternalError", f"Could not persist the change: {exc}", 500)
        start_response(started[0], started[1])
        return [b"".join(chunks)]

    def _plan(self, environ, method):
        """What to write to disk once moto has accepted this request; None for nothing."""
        if method not in ("PUT", "POST", "DELETE"):
            return None
        raw = _raw_path(environ)
        bucket, key = raw.lstrip("/").split("/")[0], "/".join(unquote(raw).split("/")[2:])  # as moto parses path style
        names = {k for k, _ in _query_pairs(environ.get("QUERY_STRING", ""))}
        if not bucket:
            return None
        if key and ("uploads" in names or ("uploadId" in names and method != "POST")):
            return None  # start / part / abort of a multipart upload: nothing acknowledged yet
        length = environ.get("CONTENT_LENGTH") or ""  # take the body in before holding the lock
        stream = environ["wsgi.input"]
        body = stream.read(int(length)) if length.isdigit() else stream.read() if environ.get("wsgi.input_terminated") else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if key:
            return lambda: self.store.sync_key(bucket, key)
        if method == "POST" and "delete" in names:  # DeleteObjects
            try:
                keys = [el.text or "" for el in ET.fromstring(body).iter() if el.tag.rsplit("}", 1)[-1] == "Key"]
                return lambda: [self.store.sync_key(bucket, k) for k in keys]
            except ET.ParseError:
                pass
        return lambda: self.store.sync_all(bucket) if method == "POST" else self.store.sync_bucket(bucket)


def _reply(start_response, status: str, body: bytes, content_type: str = "application/xml"):
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def _error(start_response, method: str, code: str, message: str, status: int = 403):
    body = b"" if method == "HEAD" else (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>'
                                         f"{message}</Message><RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>").encode()
    return _reply(start_response, {403: "403 Forbidden", 500: "500 Internal Server Error"}[status], body)


def _read_credentials(path: Path) -> tuple[str, str]:
    try:
        if path.stat().st_mode & 0o077:
            raise UsageError(f"{path} is readable by others; chmod 600 it")
        creds = json.loads(path.read_text())
        return creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read credentials from {path}: needs JSON with AWS_ACCESS_KEY_ID and "
                         f"AWS_SECRET_ACCESS_KEY ({type(exc).__name__})") from None


def _open(args):
    """Check the arguments, bind the port, load --data: (server, store, loaded, imported)."""
    try:
        loopback = ipaddress.ip_address(args.host) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(f"--host {args.host} is not a loopback address (127.x); refusing to serve S3 beyond this machine")
    key_id, secret = _read_credentials(args.credentials)
    import moto.settings

    moto.settings.S3_IGNORE_SUBDOMAIN_BUCKETNAME = True  # path style only: moto finds bucket and key as _plan does
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from moto.s3.models import s3_backends
    from werkzeug.serving import make_server

    class Handler(MotoRequestHandler):
        def log_request(self, *args, **kwargs):  # no line per request
            pass

    store = Store(args.data.resolve(), s3_backends[os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)]["aws"])
    with socket.socket() as listener:  # bound here, so a busy port is our one-line error, not werkzeug's exit
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((args.host, args.port))
            listener.listen(128)
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
        server = make_server(args.host, args.port, App(create_backend_app("s3"), store, SigV4Check(key_id, secret)),
                             threaded=True, request_handler=Handler, fd=listener.fileno())
    loaded, imported = store.load(), 0
    if not store.index and args.import_snapshot and args.import_snapshot.is_dir():
        imported = store.import_snapshot(args.import_snapshot)
    if args.bucket not in store.backend.buckets:
        store.backend.create_bucket(args.bucket, REGION)
        store.sync_bucket(args.bucket)
    return server, store, loaded, imported


def _usage_error(message: str):
    raise UsageError(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bfn_platform.s3_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (127.x)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder the objects are kept in")
    parser.add_argument("--credentials", type=Path, required=True, help="JSON key pair file (mode 0600)")
    parser.add_argument("--bucket", default="bfn", help="bucket to create when absent")
    parser.add_argument("--import-snapshot", type=Path, help="old `bfn stack down` snapshot, imported when --data is empty")
    parser.error = _usage_error
    try:
        args = parser.parse_args(argv)
        server, store, loaded, imported = _open(args)
    except (UsageError, OSError, ValueError, KeyError) as exc:
        print(f"s3_server: error: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"s3_server: serving http://{args.host}:{args.port} from {store.root}: {loaded} objects loaded"
          + (f", {imported} imported from {args.import_snapshot}" if imported else ""), flush=True)
    server.serve_forever()
    with store.lock:  # let a mutation in flight finish persisting
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
