"""Artifact store in an S3-compatible bucket, through the ``minio`` SDK.

Failures are sorted into the two kinds the pipeline acts on: an unreachable, overloaded or
failing server is ``Retryable`` (the Job's backoff retries the pod); rejected credentials, a
missing bucket or a broken TLS setup are ``BadInput`` (retrying cannot help, the Job fails at once).
The HTTP client uses short connect timeouts and bounded retries so that a dead endpoint fails the
step in seconds instead of hanging for minutes. Secrets stay inside the SDK's credentials
provider: no message, ``repr`` or log line of this module contains them.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import ssl
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.util import Retry, Timeout

from ..errors import BadInput, Retryable, T2SError
from .base import ArtifactNotFound, ArtifactStore, ObjectInfo, normalize_key, normalize_prefix
from .config import S3StoreConfig

__all__ = ["S3Credentials", "S3Store", "resolve_credentials"]

MiB = 1024 * 1024
_MAX_PARTS = 10_000
_TMP_MARK = ".t2s-tmp-"

_ACCESS_KEY_FILES = ("access_key", "AWS_ACCESS_KEY_ID", "aws_access_key_id", "accesskey", "accessKey")
_SECRET_KEY_FILES = ("secret_key", "AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", "secretkey", "secretKey")
_SESSION_TOKEN_FILES = ("session_token", "AWS_SESSION_TOKEN", "aws_session_token")

# S3 error codes meaning "these credentials may not do this": fix the Secret, do not retry.
_CREDENTIAL_CODES = frozenset({
    "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken",
    "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidSecurity", "AllAccessDisabled",
    "AccountProblem", "MissingSecurityHeader",
})
# S3 error codes meaning "try again later".
_RETRYABLE_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "OperationAborted",
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
})


@dataclass(frozen=True)
class S3Credentials:
    """Keys for one store, and where they came from (the only part that may be shown)."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = "the credentials given to S3Store"

    def __repr__(self) -> str:
        return f"S3Credentials(source={self.source!r})"


def _read_secret_file(directory: Path, names: tuple[str, ...]) -> str | None:
    for name in names:
        path = directory / name
        if path.is_file():
            value = path.read_text(encoding="utf-8").strip()
            if not value:
                raise BadInput(f"credentials file {path} is empty", uri=str(path),
                               field="store.s3.credentials_dir")
            return value
    return None


def resolve_credentials(cfg: S3StoreConfig, environ: Mapping[str, str] | None = None) -> S3Credentials:
    """Keys from ``credentials_dir`` when set (a mounted Secret), else from the environment."""
    env = os.environ if environ is None else environ
    if cfg.credentials_dir:
        directory = Path(cfg.credentials_dir)
        if not directory.is_dir():
            raise BadInput(f"credentials_dir {directory} does not exist or is not a directory (is the Secret "
                           "mounted?)", uri=str(directory), field="store.s3.credentials_dir")
        access = _read_secret_file(directory, _ACCESS_KEY_FILES)
        secret = _read_secret_file(directory, _SECRET_KEY_FILES)
        missing = [f"{names[0]} (or {names[1]})" for names, v in
                   ((_ACCESS_KEY_FILES, access), (_SECRET_KEY_FILES, secret)) if v is None]
        if missing:
            raise BadInput(f"credentials_dir {directory} lacks the file(s) {' and '.join(missing)}",
                           uri=str(directory), field="store.s3.credentials_dir")
        token = _read_secret_file(directory, _SESSION_TOKEN_FILES)
        return S3Credentials(access, secret, token, source=f"the files in credentials_dir {directory}")  # type: ignore[arg-type]
    access = env.get(cfg.access_key_env) or None
    secret = env.get(cfg.secret_key_env) or None
    if access is None or secret is None:
        unset = [name for name, v in ((cfg.access_key_env, access), (cfg.secret_key_env, secret))
                 if v is None]
        raise BadInput(f"no S3 credentials: environment variable(s) {', '.join(unset)} are not set; set "
                       f"{cfg.access_key_env} and {cfg.secret_key_env}, or point `store.s3.credentials_dir` "
                       "at a mounted Secret with files access_key and secret_key", field="store.s3")
    token = env.get(cfg.session_token_env) or None
    return S3Credentials(access, secret, token,
                         source=f"{cfg.access_key_env}/{cfg.secret_key_env} or credentials_dir")


def _http_client(cfg: S3StoreConfig) -> urllib3.PoolManager:
    """Bounded timeouts and retries: a stopped server must fail a step in seconds, not minutes."""
    if cfg.ca_bundle is not None and not Path(cfg.ca_bundle).is_file():
        raise BadInput(f"ca_bundle {cfg.ca_bundle} is not a file", uri=cfg.ca_bundle,
                       field="store.s3.ca_bundle")
    ca_certs = cfg.ca_bundle or os.environ.get("SSL_CERT_FILE") or certifi.where()
    # other=0: TLS and proxy failures are configuration errors, retrying them only delays the message
    retries = Retry(total=cfg.max_retries, connect=cfg.max_retries, read=cfg.max_retries,
                    status=cfg.max_retries, other=0, backoff_factor=0.2, backoff_max=5.0,
                    status_forcelist=(429, 500, 502, 503, 504), raise_on_status=False)
    return urllib3.PoolManager(
        timeout=Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s),
        maxsize=max(10, cfg.max_workers * cfg.multipart_workers),
        cert_reqs="CERT_REQUIRED", ca_certs=ca_certs, retries=retries,
    )


def _object_size(resp: Any, default: int | None) -> int | None:
    """The whole object's size from a (ranged) GET response: ``Content-Range: bytes a-b/size``."""
    content_range = resp.headers.get("Content-Range") or resp.headers.get("content-range")
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1].strip()
        if tail.isdigit():
            return int(tail)
    length = resp.headers.get("Content-Length") or resp.headers.get("content-length")
    return int(length) if length and length.isdigit() else default


class S3Store(ArtifactStore):
    """Artifacts as objects ``<prefix>/<key>`` in one bucket."""

    def __init__(self, cfg: S3StoreConfig, *, credentials: S3Credentials | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.bucket = cfg.bucket
        self.endpoint = cfg.endpoint
        self._root = cfg.prefix.strip("/")
        self.uri = f"s3://{cfg.bucket}/{self._root}" if self._root else f"s3://{cfg.bucket}"
        self.default_workers = cfg.max_workers
        creds = credentials if credentials is not None else resolve_credentials(cfg, environ)
        self._credential_hint = creds.source
        self._client = Minio(cfg.endpoint, access_key=creds.access_key, secret_key=creds.secret_key,
                             session_token=creds.session_token, secure=cfg.secure, region=cfg.region,
                             http_client=_http_client(cfg))
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    # keys -----------------------------------------------------------------------------------
    def _obj(self, key: str) -> str:
        key = normalize_key(key)
        return f"{self._root}/{key}" if self._root else key

    def _key(self, object_name: str) -> str:
        return object_name[len(self._root) + 1:] if self._root else object_name

    def _obj_prefix(self, prefix: str) -> str:
        prefix = normalize_prefix(prefix)
        full = f"{self._root}/{prefix}" if self._root and prefix else (self._root or prefix)
        return f"{full}/" if full else ""

    # errors ---------------------------------------------------------------------------------
    def _credentials_error(self, code: str, action: str) -> BadInput:
        what = "denied access" if code == "AccessDenied" else "rejected the credentials"
        extra = " (or grant them access to this bucket)" if code == "AccessDenied" else ""
        return BadInput(f"S3 {what} for s3://{self.bucket} ({code}) while trying to {action}: check "
                        f"{self._credential_hint}{extra}", uri=self.uri)

    def _translate(self, exc: BaseException, action: str, key: str) -> T2SError | None:
        uri = self.uri_for(key)
        if isinstance(exc, S3Error):
            code = exc.code or ""
            status = exc.response.status if exc.response is not None else 0
            if code in _CREDENTIAL_CODES or status in (401, 403):
                return self._credentials_error(code or f"HTTP {status}", action)
            if code == "NoSuchBucket":
                return self._missing_bucket()
            if code in ("NoSuchKey", "NoSuchUpload") or (status == 404 and key):
                return ArtifactNotFound("no such artifact", uri=uri)
            if code == "RequestTimeTooSkewed":
                return BadInput("S3 refused the request because this machine's clock is off "
                                "(RequestTimeTooSkewed): sync the clock (NTP)", uri=uri)
            if code in _RETRYABLE_CODES or status >= 500 or status == 429:
                return Retryable(f"S3 failed to {action} ({code or status}: {exc.message}); retry later",
                                 uri=uri)
            return T2SError(f"S3 refused to {action} ({code}: {exc.message})", uri=uri)
        if isinstance(exc, ServerError):
            return Retryable(f"S3 server error while trying to {action} (HTTP {exc.status_code}); "
                             "retry later", uri=uri)
        if isinstance(exc, InvalidResponseError):
            status = getattr(exc, "_code", 0) or 0
            if status in (401, 403):
                return self._credentials_error(f"HTTP {status}", action)
            if status >= 500 or status == 429:
                return Retryable(f"S3 failed to {action} (HTTP {status}); retry later", uri=uri)
            return T2SError(f"unexpected answer from S3 while trying to {action}: {exc}", uri=uri)
        if isinstance(exc, urllib3.exceptions.MaxRetryError | urllib3.exceptions.SSLError | ssl.SSLError):
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, urllib3.exceptions.SSLError | ssl.SSLError):
                return BadInput(f"TLS with {self.endpoint} failed ({reason}): set `store.s3.ca_bundle` to "
                                "the CA that signed the server certificate, or `secure: false` for a "
                                "plain-HTTP server", uri=uri, field="store.s3")
            return Retryable(f"cannot reach S3 at {self.endpoint} to {action}: {reason}", uri=uri)
        if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
            return Retryable(f"connection to S3 at {self.endpoint} failed while trying to {action}: {exc}",
                             uri=uri)
        return None

    @contextmanager
    def _errors(self, action: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except T2SError:
            raise
        except Exception as exc:
            err = self._translate(exc, action, key)
            if err is None:
                raise
            raise err from exc

    def _missing_bucket(self) -> BadInput:
        return BadInput(f"bucket {self.bucket!r} does not exist at {self.endpoint}: create it, or set "
                        "`store.s3.create_bucket: true`", uri=f"s3://{self.bucket}", field="store.s3.bucket")

    def _ensure_bucket(self) -> None:
        """Check the bucket once per store, so a typo fails with its own message, not per-object 404s.

        The probe is a listing (GET), not HEAD: its XML error names the precise cause
        (SignatureDoesNotMatch, InvalidAccessKeyId, NoSuchBucket), and it needs the ListBucket
        permission that ``list`` needs anyway.
        """
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            probe = f"{self._root}/.t2s-probe/" if self._root else ".t2s-probe/"
            with self._errors("check the bucket"):
                try:
                    for _ in self._client.list_objects(self.bucket, prefix=probe):
                        break
                    found = True
                except S3Error as err:
                    if err.code != "NoSuchBucket":
                        raise
                    found = False
            if not found:
                if not self.cfg.create_bucket:
                    raise self._missing_bucket()
                with self._errors("create the bucket"):
                    try:
                        self._client.make_bucket(self.bucket, location=self.cfg.region or "us-east-1")
                    except S3Error as err:
                        if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise
            self._bucket_ready = True

    # single objects -------------------------------------------------------------------------
    def _part_size(self, size: int) -> int:
        """The configured part size, grown when a huge file would need more than S3's 10 000 parts."""
        part = self.cfg.part_size_mb * MiB
        if size > part * _MAX_PARTS:
            part = math.ceil(size / _MAX_PARTS / MiB) * MiB
        return part

    def put_file(self, local: Path, key: str) -> None:
        local = Path(local)
        obj = self._obj(key)
        if not local.is_file():
            raise BadInput(f"cannot upload {local}: not a file", uri=self.uri_for(key))
        self._ensure_bucket()
        with self._errors("upload", key):
            self._client.fput_object(self.bucket, obj, str(local),
                                     part_size=self._part_size(local.stat().st_size),
                                     num_parallel_uploads=self.cfg.multipart_workers)

    def get_file(self, key: str, local: Path) -> None:
        self.get_file_hashed(key, local)

    def get_file_hashed(self, key: str, local: Path, *, size: int | None = None) -> tuple[int, str]:
        """Download ``key`` to ``local`` atomically; return its size and sha256, hashed as the bytes arrive.

        A file larger than one part comes as parallel ranged GETs (``multipart_workers`` at a time,
        ``part_size_mb`` each), written at their offsets; the hash consumes the parts in order as
        they complete, so verifying a download needs no second pass over the file. A single GET
        stream is bound by one connection's throughput, which is why big files were slow.
        ``size`` (known from a manifest) lets every part start at once; without it the first part's
        answer tells the size.
        """
        local = Path(local)
        obj = self._obj(key)
        self._ensure_bucket()
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}{_TMP_MARK}", dir=local.parent)
        try:
            with os.fdopen(fd, "wb") as f, self._errors("download", key):
                digest = hashlib.sha256()
                part = self.cfg.part_size_mb * MiB
                workers = self.cfg.multipart_workers
                if size is not None and size > part and workers > 1:
                    got = self._get_ranges(obj, f, digest, start=0, end=size, part=part, workers=workers)
                    os.replace(tmp, local)
                    return got, digest.hexdigest()
                ranged = workers > 1 and size is None  # a known small size needs no range
                try:
                    resp = self._client.get_object(self.bucket, obj, length=part if ranged else 0)
                except S3Error as err:
                    if err.code != "InvalidRange":  # an empty object has no byte 0 to start a range at
                        raise
                    resp = self._client.get_object(self.bucket, obj)
                try:
                    total = _object_size(resp, default=None)
                    size = 0
                    for chunk in resp.stream(MiB):
                        f.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                finally:
                    resp.close()
                    resp.release_conn()
                if total is not None and total > size:
                    f.flush()
                    size += self._get_ranges(obj, f, digest, start=size, end=total, part=part, workers=workers)
            os.replace(tmp, local)
            return size, digest.hexdigest()
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _get_ranges(self, obj: str, f: Any, digest: Any, *, start: int, end: int, part: int, workers: int) -> int:
        """Bytes ``[start, end)`` of ``obj`` as parallel ranged GETs into ``f``; hashed in order. Returns the count.

        At most ``2 * workers`` parts are in memory: the window only moves on once the hash took
        the oldest part, so memory stays bounded whatever the file's size.
        """
        from concurrent.futures import ThreadPoolExecutor

        offsets = list(range(start, end, part))

        def fetch(offset: int) -> bytes:
            length = min(part, end - offset)
            resp = self._client.get_object(self.bucket, obj, offset=offset, length=length)
            try:
                data = resp.read()
            finally:
                resp.close()
                resp.release_conn()
            if len(data) != length:
                raise Retryable(f"S3 returned {len(data)} bytes for a range of {length} at offset {offset}; "
                                "the object changed or the connection broke", uri=self.uri_for(self._key(obj)))
            os.pwrite(f.fileno(), data, offset)
            return data

        done = 0
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-get") as pool:
            window = 2 * workers
            pending = [pool.submit(fetch, o) for o in offsets[:window]]
            following = iter(offsets[window:])
            try:
                while pending:
                    data = pending.pop(0).result()
                    digest.update(data)
                    done += len(data)
                    nxt = next(following, None)
                    if nxt is not None:
                        pending.append(pool.submit(fetch, nxt))
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
        f.seek(end)
        return done

    def put_bytes(self, key: str, data: bytes) -> None:
        obj = self._obj(key)
        self._ensure_bucket()
        data = bytes(data)
        with self._errors("upload", key):
            self._client.put_object(self.bucket, obj, io.BytesIO(data), len(data),
                                    part_size=self._part_size(len(data)))

    create_guarantee = ("conditional: PUT with `If-None-Match: *`, which the server refuses when the key exists "
                        "(AWS S3, MinIO, recent SeaweedFS/Ceph); a server that ignores the header overwrites, "
                        "so the lease also re-reads its token at every heartbeat")

    def create_bytes(self, key: str, data: bytes) -> bool:
        obj = self._obj(key)
        self._ensure_bucket()
        data = bytes(data)
        try:
            with self._errors("create", key):
                # minio's public put_object cannot send conditional headers; this is its single-PUT call
                self._client._put_object(self.bucket, obj, data,
                                         headers={"If-None-Match": "*", "Content-Type": "application/json"})
        except T2SError as err:
            cause = err.__cause__
            if isinstance(cause, S3Error) and (cause.code in ("PreconditionFailed", "ConditionalRequestConflict")
                                               or (cause.response is not None
                                                   and cause.response.status in (409, 412))):
                return False
            raise
        return True

    def _incomplete_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(object name, upload id) of every multipart upload under ``prefix`` never completed or aborted."""
        obj_prefix = self._obj_prefix(prefix)
        self._ensure_bucket()
        found: list[tuple[str, str]] = []
        marker: str | None = None
        with self._errors("list incomplete uploads", normalize_prefix(prefix)):
            while True:
                page = self._client._list_multipart_uploads(self.bucket, prefix=obj_prefix or None,
                                                            key_marker=marker)
                found.extend((u.object_name, u.upload_id) for u in page.uploads if u.upload_id)
                if not page.is_truncated or not page.next_key_marker or page.next_key_marker == marker:
                    break
                marker = page.next_key_marker
        return found

    def debris(self, prefix: str) -> list[str]:
        """Incomplete multipart uploads: invisible to ``list`` but billed (and kept) by the server."""
        return sorted(f"{self._key(name)} (upload {upload_id})" for name, upload_id in self._incomplete_uploads(prefix))

    def clean_debris(self, prefix: str) -> int:
        removed = 0
        try:
            uploads = self._incomplete_uploads(prefix)
        except BadInput as err:  # no s3:ListBucketMultipartUploads: publishing must not depend on it
            from ..logging import get_logger

            get_logger().warning("cannot list incomplete uploads; not cleaning them", error=str(err))
            return 0
        for name, upload_id in uploads:
            try:
                with self._errors("abort an incomplete upload", self._key(name)):
                    self._client._abort_multipart_upload(self.bucket, name, upload_id)
            except ArtifactNotFound:  # NoSuchUpload: completed or aborted meanwhile
                continue
            removed += 1
        return removed

    def get_bytes(self, key: str) -> bytes:
        obj = self._obj(key)
        self._ensure_bucket()
        with self._errors("download", key):
            resp = self._client.get_object(self.bucket, obj)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

    def exists(self, key: str) -> bool:
        obj = self._obj(key)
        self._ensure_bucket()
        try:
            with self._errors("look up", key):
                self._client.stat_object(self.bucket, obj)
        except ArtifactNotFound:
            return False
        return True

    def delete(self, key: str) -> bool:
        if not self.exists(key):
            return False
        with self._errors("delete", key):
            self._client.remove_object(self.bucket, self._obj(key))
        return True

    # prefixes -------------------------------------------------------------------------------
    def list(self, prefix: str) -> list[ObjectInfo]:
        obj_prefix = self._obj_prefix(prefix)
        self._ensure_bucket()
        with self._errors("list", normalize_prefix(prefix)):
            objects = self._client.list_objects(self.bucket, prefix=obj_prefix or None, recursive=True)
            found = [ObjectInfo(self._key(o.object_name), int(o.size or 0)) for o in objects
                     if o.object_name and not o.object_name.endswith("/")]
        return sorted(found, key=lambda o: o.key)

    def delete_keys(self, keys: Iterable[str], *, workers: int | None = None) -> None:
        """One DeleteObjects request per 1000 keys instead of one request per key."""
        objects = [DeleteObject(self._obj(k)) for k in keys]
        if not objects:
            return
        self._ensure_bucket()
        with self._errors("delete"):
            errors = list(self._client.remove_objects(self.bucket, objects))
        if errors:
            first = errors[0]
            if first.code in _CREDENTIAL_CODES:
                raise self._credentials_error(first.code, "delete")
            raise Retryable(f"S3 failed to delete {len(errors)} of {len(objects)} objects "
                            f"(first: {first.code}: {first.message})",
                            uri=self.uri_for(self._key(first.name or "")))

    def delete_prefix(self, prefix: str) -> int:
        infos = self.list(prefix)
        self.delete_keys(i.key for i in infos)
        return len(infos)
