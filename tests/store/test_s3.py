"""S3 backend behaviour beyond the shared contract: multipart, credentials, TLS, outages.

SeaweedFS checks SigV4 signatures and runs as a real process that can be killed; moto is the
fast in-process server; a tiny HTTP server plays an overloaded S3 that only answers 503.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.servers import S3Server, SeaweedFS, free_port, on_seaweedfs, unique_name
from text2sql_core.errors import BadInput, Retryable
from text2sql_core.store import StoreConfig, open_store
from text2sql_core.store.config import S3StoreConfig
from text2sql_core.store.manifest import MANIFEST_NAME, fetch, file_sha256, publish, read_manifest
from text2sql_core.store.s3 import S3Credentials, S3Store, resolve_credentials

MiB = 1024 * 1024


def _random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def _publish(store: S3Store, prefix: str, local: Path):
    return publish(store, prefix, local, run_id="r1", step="sft", kind="sft", config_hash="h1", metrics={},
                   started_at=datetime.now(UTC))


def _ensure_bucket(server: S3Server, bucket: str) -> None:
    client = server.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)


# -- SeaweedFS: large files, trees, credentials, TLS, a crash ---------------------------------------

@on_seaweedfs
def test_seaweedfs_100mb_multipart_publish_and_fetch(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    big = _random_file(tmp_path / "out" / "model.safetensors", 100 * MiB)
    (tmp_path / "out" / "config.json").write_text('{"tiny": true}')
    store = seaweedfs.s3.open(unique_name("big"), part_size_mb=8)
    m = _publish(store, "runs/r1/sft", tmp_path / "out")

    stat = seaweedfs.s3.client().stat_object(store.bucket, "runs/r1/sft/model.safetensors")
    assert stat.size == 100 * MiB
    assert stat.etag.endswith("-13"), stat.etag  # a multipart upload of ceil(100/8) parts

    fetch(store, "runs/r1/sft", tmp_path / "in")
    assert file_sha256(tmp_path / "in" / "model.safetensors") == file_sha256(big)
    assert next(f for f in m.files if f.path == "model.safetensors").size == 100 * MiB


@on_seaweedfs
def test_seaweedfs_directory_tree(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    files = {f"shard{i // 20}/part-{i:03d}.jsonl": os.urandom(i * 97) for i in range(120)}
    for rel, data in files.items():
        (tmp_path / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / rel).write_bytes(data)
    store = seaweedfs.s3.open(unique_name("tree"), max_workers=8)
    keys = store.put_tree(tmp_path / "out", "data/prepared")
    assert len(keys) == 120 and keys == sorted(keys)
    assert {o.key: o.size for o in store.list("data/prepared")} == {f"data/prepared/{r}": len(d)
                                                                     for r, d in files.items()}
    store.get_tree("data/prepared", tmp_path / "back")
    for rel, data in files.items():
        assert (tmp_path / "back" / rel).read_bytes() == data
    assert store.delete_prefix("data") == 120
    assert store.list("") == []


@on_seaweedfs
@pytest.mark.parametrize(("wrong", "code"), [("secret", "SignatureDoesNotMatch"),
                                             ("access", "InvalidAccessKeyId")])
def test_seaweedfs_wrong_credentials_are_a_clear_bad_input(seaweedfs: SeaweedFS, wrong: str,
                                                           code: str) -> None:
    server = seaweedfs.s3
    _ensure_bucket(server, "t2s-creds")
    bad_secret = "not-the-secret-" + "x" * 20
    creds = (S3Credentials(server.access_key, bad_secret, source="AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                           "credentials_dir") if wrong == "secret"
             else S3Credentials("nobody-" + server.access_key, server.secret_key,
                                source="AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or credentials_dir"))
    store = server.open("t2s-creds", credentials=creds, create_bucket=False)
    t0 = time.monotonic()
    with pytest.raises(BadInput) as info:
        store.put_bytes("runs/r1/x", b"x")
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert msg.startswith("s3://t2s-creds")
    assert f"S3 rejected the credentials for s3://t2s-creds ({code})" in msg
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or credentials_dir" in msg
    assert info.value.exit_code == 2
    chain = f"{info.value!r} {info.value.__cause__!r} {info.value.__cause__}"
    for secret in (bad_secret, server.secret_key):
        assert secret not in msg and secret not in chain and secret not in repr(store)


@on_seaweedfs
def test_seaweedfs_credentials_dir_wins_over_env(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    server = seaweedfs.s3
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "AWS_ACCESS_KEY_ID").write_text(server.access_key + "\n")
    (secret_dir / "AWS_SECRET_ACCESS_KEY").write_text(server.secret_key + "\n")
    env = {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": "wrong-secret-from-env"}
    cfg = server.config(unique_name("creds"), credentials_dir=str(secret_dir))
    store = S3Store(cfg, environ=env)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    # without the directory, the wrong env secret is used and the server rejects it
    with pytest.raises(BadInput,
                       match=r"SignatureDoesNotMatch.*check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"):
        S3Store(cfg.model_copy(update={"credentials_dir": None}), environ=env).get_bytes("k")
    # and a wrong key in the directory names the directory
    (secret_dir / "AWS_SECRET_ACCESS_KEY").write_text("wrong")
    with pytest.raises(BadInput,
                       match=f"SignatureDoesNotMatch.*check the files in credentials_dir {secret_dir}"):
        S3Store(cfg, environ=env).get_bytes("k")


@on_seaweedfs
def test_open_store_reads_keys_from_environment(seaweedfs: SeaweedFS,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    server = seaweedfs.s3
    monkeypatch.setenv("T2S_TEST_AK", server.access_key)
    monkeypatch.setenv("T2S_TEST_SK", server.secret_key)
    cfg = StoreConfig(kind="s3", s3=server.config(unique_name("env"), access_key_env="T2S_TEST_AK",
                                                  secret_key_env="T2S_TEST_SK", prefix="team/a"))
    store = open_store(cfg)
    assert isinstance(store, S3Store) and store.uri == f"s3://{cfg.s3.bucket}/team/a"
    store.put_bytes("runs/r1/x", b"1")
    names = [o.object_name for o in server.client().list_objects(cfg.s3.bucket, recursive=True)]
    assert names == ["team/a/runs/r1/x"]


@on_seaweedfs
def test_seaweedfs_tls_with_ca_bundle(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    server = seaweedfs.s3_tls
    store = server.open(unique_name("tls"))
    assert store.cfg.secure
    src = _random_file(tmp_path / "f.bin", 6 * MiB)
    store.put_file(src, "a/f.bin")
    store.get_file("a/f.bin", tmp_path / "g.bin")
    assert file_sha256(tmp_path / "g.bin") == file_sha256(src)


@on_seaweedfs
def test_seaweedfs_tls_without_trusted_ca_is_bad_input(seaweedfs: SeaweedFS) -> None:
    store = seaweedfs.s3_tls.open(unique_name("tls"), ca_bundle=None)
    with pytest.raises(BadInput, match=r"TLS with .* failed .*CERTIFICATE_VERIFY_FAILED.*ca_bundle"):
        store.put_bytes("x", b"x")
    plain = seaweedfs.s3.open(unique_name("tls"), secure=True)  # https to a plain-HTTP port
    with pytest.raises(BadInput, match=r"TLS with .* failed.*secure: false"):
        plain.put_bytes("x", b"x")


def test_seaweedfs_killed_mid_upload_then_retry_succeeds(seaweedfs_factory, tmp_path: Path) -> None:
    server: SeaweedFS = seaweedfs_factory(tls=False)
    out = tmp_path / "out"
    big = _random_file(out / "model.bin", 64 * MiB)
    (out / "config.json").write_text("{}")
    bucket, prefix = "crash", "runs/r1/sft"
    store = server.s3.open(bucket, part_size_mb=5, multipart_workers=2, max_retries=1)
    store.put_bytes("warmup", b"bucket exists now")

    baseline = server.data_bytes()
    finished = threading.Event()
    killed = threading.Event()

    def kill_when_upload_is_underway() -> None:
        deadline = time.monotonic() + 60
        while not finished.is_set() and time.monotonic() < deadline:
            if server.data_bytes() - baseline > 15 * MiB:
                server.kill()
                killed.set()
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_upload_is_underway)
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(Retryable) as info:
            _publish(store, prefix, out)
    finally:
        finished.set()
        killer.join()
    assert killed.is_set(), "the upload finished before the server could be killed"
    assert time.monotonic() - t0 < 30
    assert info.value.exit_code == 1
    assert "s3://crash" in str(info.value)

    server.start()  # same data dir and ports, like a restarted pod
    fresh = server.s3.open(bucket)
    assert read_manifest(fresh, prefix) is None
    assert not fresh.exists(f"{prefix}/{MANIFEST_NAME}")
    assert not fresh.exists(f"{prefix}/model.bin")  # the multipart upload never completed

    m = _publish(fresh, prefix, out)
    assert read_manifest(fresh, prefix) == m
    fetch(fresh, prefix, tmp_path / "in")
    assert file_sha256(tmp_path / "in" / "model.bin") == file_sha256(big)


# -- moto: bucket handling, prefixes --------------------------------------------------------------

def test_missing_bucket_is_bad_input_unless_create_bucket(moto_s3: S3Server) -> None:
    bucket = unique_name("missing")
    store = moto_s3.open(bucket, create_bucket=False)
    with pytest.raises(BadInput, match=rf"bucket '{bucket}' does not exist .*create_bucket: true") as info:
        store.list("runs")
    assert info.value.field == "store.s3.bucket"
    assert not moto_s3.client().bucket_exists(bucket)
    creating = moto_s3.open(bucket, create_bucket=True)
    assert creating.list("runs") == []
    assert moto_s3.client().bucket_exists(bucket)


def test_store_prefix_isolates_stores_in_one_bucket(moto_s3: S3Server) -> None:
    bucket = unique_name("shared")
    a = moto_s3.open(bucket, prefix="/team-a/")
    b = moto_s3.open(bucket, prefix="team-b")
    a.put_bytes("runs/r1/x", b"a")
    b.put_bytes("runs/r1/x", b"b")
    assert a.uri == f"s3://{bucket}/team-a"
    assert [o.key for o in a.list("")] == ["runs/r1/x"]
    assert a.get_bytes("runs/r1/x") == b"a" and b.get_bytes("runs/r1/x") == b"b"
    assert a.delete_prefix("") == 1
    assert b.get_bytes("runs/r1/x") == b"b"
    names = sorted(o.object_name for o in moto_s3.client().list_objects(bucket, recursive=True))
    assert names == ["team-b/runs/r1/x"]


# -- outages: nothing listening, an overloaded server ---------------------------------------------

def test_unreachable_endpoint_is_retryable_within_seconds() -> None:
    port = free_port()
    cfg = S3StoreConfig(endpoint=f"127.0.0.1:{port}", bucket="nobody-home", secure=False, region="us-east-1")
    store = S3Store(cfg, credentials=S3Credentials("ak", "sk"))
    t0 = time.monotonic()
    with pytest.raises(Retryable, match=rf"^s3://nobody-home: cannot reach S3 at 127.0.0.1:{port}"):
        store.get_bytes("runs/x")
    assert time.monotonic() - t0 < 10


class _SlowDown(BaseHTTPRequestHandler):
    """An S3 that is always overloaded: every request gets 503 SlowDown."""

    hits = 0

    def _answer(self) -> None:
        type(self).hits += 1
        body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def test_throttling_is_retryable_after_bounded_retries() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SlowDown)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = S3StoreConfig(endpoint=f"127.0.0.1:{httpd.server_address[1]}", bucket="busy-bucket",
                            secure=False, region="us-east-1", max_retries=2)
        store = S3Store(cfg, credentials=S3Credentials("ak", "sk"))
        _SlowDown.hits = 0
        with pytest.raises(Retryable, match=r"SlowDown"):
            store.put_bytes("k", b"x")
        assert _SlowDown.hits == 3  # the first try and max_retries retries, then give up
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- credentials resolution -----------------------------------------------------------------------

def _cfg(**kw) -> S3StoreConfig:
    return S3StoreConfig(endpoint="s3.example.com", bucket="bkt", **kw)


def test_credentials_from_environment() -> None:
    creds = resolve_credentials(_cfg(), {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK",
                                         "AWS_SESSION_TOKEN": "TOK"})
    assert (creds.access_key, creds.secret_key, creds.session_token) == ("AK", "SK", "TOK")
    assert "SK" not in repr(creds) and "AK" not in repr(creds)
    custom = resolve_credentials(_cfg(access_key_env="MY_AK", secret_key_env="MY_SK"),
                                 {"MY_AK": "a", "MY_SK": "b"})
    assert (custom.access_key, custom.secret_key) == ("a", "b")


def test_missing_credentials_name_the_variables() -> None:
    with pytest.raises(BadInput, match=r"AWS_SECRET_ACCESS_KEY are not set.*credentials_dir"):
        resolve_credentials(_cfg(), {"AWS_ACCESS_KEY_ID": "AK"})


@pytest.mark.parametrize(("ak_name", "sk_name"), [("access_key", "secret_key"),
                                                  ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                                                  ("accesskey", "secretkey")])
def test_credentials_dir_file_names(tmp_path: Path, ak_name: str, sk_name: str) -> None:
    (tmp_path / ak_name).write_text("DIR_AK\n")
    (tmp_path / sk_name).write_text("DIR_SK\n")
    creds = resolve_credentials(_cfg(credentials_dir=str(tmp_path)),
                                {"AWS_ACCESS_KEY_ID": "ENV_AK", "AWS_SECRET_ACCESS_KEY": "ENV_SK"})
    assert (creds.access_key, creds.secret_key) == ("DIR_AK", "DIR_SK")
    assert str(tmp_path) in creds.source


def test_credentials_dir_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist.*Secret mounted"):
        resolve_credentials(_cfg(credentials_dir=str(tmp_path / "nope")), {})
    (tmp_path / "access_key").write_text("AK")
    with pytest.raises(BadInput, match=r"lacks the file\(s\) secret_key \(or AWS_SECRET_ACCESS_KEY\)"):
        resolve_credentials(_cfg(credentials_dir=str(tmp_path)), {})
    (tmp_path / "secret_key").write_text("  \n")
    with pytest.raises(BadInput, match="secret_key is empty"):
        resolve_credentials(_cfg(credentials_dir=str(tmp_path)), {})


def test_ca_bundle_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="ca_bundle .* is not a file"):
        S3Store(_cfg(ca_bundle=str(tmp_path / "ca.pem")), credentials=S3Credentials("a", "b"))


def test_part_size_grows_for_huge_files() -> None:
    store = S3Store(_cfg(part_size_mb=5), credentials=S3Credentials("a", "b"))
    assert store._part_size(10 * MiB) == 5 * MiB
    huge = 200 * 1024 * MiB  # 200 GiB would need 40 960 parts of 5 MiB; S3 allows 10 000
    assert store._part_size(huge) * 10_000 >= huge
    assert store._part_size(huge) % MiB == 0


def test_sha_helper_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(5 * MiB + 7)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == (len(data), hashlib.sha256(data).hexdigest())
