"""Where a run's artifacts live: a local directory (the default) or an S3 bucket.

S3 keys are deliberately *not* config fields: the YAML is committed, shared and logged, so keys
come only from environment variables or a mounted Secret directory (``credentials_dir``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["LocalStoreConfig", "S3StoreConfig", "StoreConfig"]

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SECRET_HINTS = ("secret", "password", "token", "access_key", "accesskey", "access_key_id", "credential")


class LocalStoreConfig(BaseModel):
    """A directory on the local filesystem (or a mounted volume) holding the artifacts."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(".t2s/store", description="Directory holding the artifacts; a relative path is "
                                                "resolved against the run's base directory (or the cwd).")


class S3StoreConfig(BaseModel):
    """An S3-compatible bucket (AWS S3, MinIO, SeaweedFS, Ceph RGW) reached with the ``minio`` SDK."""

    model_config = ConfigDict(extra="forbid")

    # Where
    endpoint: str = Field(..., description="S3 endpoint as host[:port], without a scheme "
                                           "(e.g. s3.eu-west-1.amazonaws.com, minio.storage:9000).")
    bucket: str = Field(..., description="Bucket holding the artifacts.")
    prefix: str = Field("", description="Key prefix inside the bucket under which every artifact is stored.")
    region: str | None = Field(None, description="Bucket region; unset asks the server (one extra request).")
    create_bucket: bool = Field(False, description="Create the bucket on first use when it does not exist.")

    # TLS
    secure: bool = Field(True, description="Use HTTPS (TLS); false only for plain-HTTP test servers.")
    ca_bundle: str | None = Field(None, description="PEM file of CA certificates to verify the server with "
                                                    "(private CA); unset uses $SSL_CERT_FILE or certifi.")

    # Credentials: names of places to read them from, never the keys themselves
    access_key_env: str = Field("AWS_ACCESS_KEY_ID",
                                description="Environment variable holding the access key.")
    secret_key_env: str = Field("AWS_SECRET_ACCESS_KEY",
                                description="Environment variable holding the secret key.")
    session_token_env: str = Field("AWS_SESSION_TOKEN",
                                   description="Environment variable holding an optional STS session token.")
    credentials_dir: str | None = Field(None, description="Directory of a mounted Secret with files "
                                                          "access_key and secret_key (or AWS_ACCESS_KEY_ID "
                                                          "and AWS_SECRET_ACCESS_KEY); takes precedence over "
                                                          "the environment.")

    # Transfers
    part_size_mb: int = Field(16, ge=5, le=5120, description="Multipart part size in MiB; larger files are "
                                                              "uploaded in parts (S3 minimum 5).")
    multipart_workers: int = Field(3, ge=1, le=32,
                                   description="Parts of one large file uploaded in parallel.")
    max_workers: int = Field(8, ge=1, le=64, description="Files of a directory tree transferred in parallel.")
    connect_timeout_s: float = Field(5.0, gt=0, le=600, description="Seconds to wait for a TCP/TLS connection.")
    read_timeout_s: float = Field(30.0, gt=0, le=3600,
                                  description="Seconds to wait for the server to answer a request. A frozen "
                                              "server fails the step (exit 1) after about (max_retries + 1) x "
                                              "this: 2 minutes by default, far below a Job's deadline.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries of one request on connection errors and "
                                                          "5xx answers, with exponential backoff.")

    @model_validator(mode="before")
    @classmethod
    def _no_keys_in_yaml(cls, data: Any) -> Any:
        """Refuse S3 keys written into the config, and scrub them so the error cannot echo them."""
        if not isinstance(data, dict):
            return data
        leaked = [k for k in data if k not in cls.model_fields and isinstance(k, str)
                  and any(h in k.lower().replace("-", "_") for h in _SECRET_HINTS)]
        if leaked:
            for k in leaked:
                data[k] = "<redacted>"  # pydantic prints the input in its error message
            raise ValueError(
                f"S3 keys never go in the config file (found {', '.join(map(repr, sorted(leaked)))}): set "
                "them in the environment variables named by `access_key_env`/`secret_key_env` (default "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or mount them as files in `credentials_dir`")
        return data

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_host_port(cls, v: str) -> str:
        v = v.strip()
        if "@" in v:  # user:secret@host: say what is wrong, never repeat the value (it holds the secret)
            raise ValueError("`endpoint` has a user part (user[:secret]@host; the value is not shown): "
                             "credentials never go in the endpoint; give host[:port] and provide the keys "
                             "through `access_key_env`/`secret_key_env` or `credentials_dir`")
        if "://" in v:
            raise ValueError(f"`endpoint` is host[:port] without a scheme (got {v!r}); use `secure: true` "
                             "for https and `secure: false` for http")
        if not v or "/" in v:
            raise ValueError(f"`endpoint` must be host[:port] with no path (got {v!r})")
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, v: str) -> str:
        if not _BUCKET_RE.match(v) or ".." in v:
            raise ValueError(f"`bucket` {v!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, "
                             "dots and hyphens, starting and ending with a letter or digit)")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix_clean(cls, v: str) -> str:
        v = v.strip("/")
        if any(part in ("", ".", "..") for part in v.split("/")) and v:
            raise ValueError(f"`prefix` {v!r} must be a plain key path (no empty, '.' or '..' segments)")
        return v


class StoreConfig(BaseModel):
    """Which artifact store a run uses; ``kind`` picks the section that applies."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "s3"] = Field("local",
                                         description="Artifact store backend: local directory or S3.")
    local: LocalStoreConfig = Field(default_factory=LocalStoreConfig,
                                    description="Local directory store (used when kind is local).")
    s3: S3StoreConfig | None = Field(None, description="S3 store (required when kind is s3).")

    # One runner per step
    lease_ttl_s: float = Field(120.0, ge=5, le=86400,
                               description="A step's lease (runs/<run>/<step>/_lease.json) without a heartbeat "
                                           "for this many seconds is expired and may be taken over by another "
                                           "runner; keep it well below the Job's retry backoff.")
    lease_heartbeat_s: float = Field(15.0, ge=0.1, le=3600,
                                     description="Seconds between heartbeats of a running step's lease.")

    @model_validator(mode="after")
    def _section_for_kind(self) -> StoreConfig:
        if self.lease_heartbeat_s * 2 > self.lease_ttl_s:
            raise ValueError(f"`lease_heartbeat_s` ({self.lease_heartbeat_s}) must be at most half of "
                             f"`lease_ttl_s` ({self.lease_ttl_s}), or a live lease looks expired")
        if self.kind == "s3" and self.s3 is None:
            raise ValueError("`store.kind` is 's3' but the `store.s3` section is missing: add `store.s3` "
                             "with at least `endpoint` and `bucket`")
        return self
