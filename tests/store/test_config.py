"""Store config: defaults, validators with messages naming the field, and secrets kept out of YAML."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from text2sql_core.store import LocalStoreConfig, S3StoreConfig, StoreConfig


def test_defaults_are_a_local_store() -> None:
    cfg = StoreConfig()
    assert cfg.kind == "local" and cfg.local == LocalStoreConfig(path=".t2s/store") and cfg.s3 is None
    s3 = S3StoreConfig(endpoint="minio.storage:9000", bucket="t2s-artifacts")
    assert (s3.secure, s3.region, s3.prefix, s3.part_size_mb, s3.max_workers, s3.create_bucket) == (
        True, None, "", 16, 8, False)
    assert (s3.access_key_env, s3.secret_key_env, s3.credentials_dir) == (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", None)


def test_every_field_is_described() -> None:
    for model in (LocalStoreConfig, S3StoreConfig, StoreConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_kind_s3_requires_the_s3_section() -> None:
    with pytest.raises(ValidationError, match=r"`store.s3` section is missing"):
        StoreConfig(kind="s3")
    cfg = StoreConfig.model_validate({"kind": "s3",
                                      "s3": {"endpoint": "s3.amazonaws.com", "bucket": "my-bucket"}})
    assert cfg.s3 is not None and cfg.s3.bucket == "my-bucket"


@pytest.mark.parametrize(("fields", "match"), [
    ({"endpoint": "https://minio:9000"}, r"`endpoint` is host\[:port\] without a scheme.*secure"),
    ({"endpoint": "minio:9000/path"}, r"`endpoint` must be host\[:port\]"),
    ({"bucket": "My_Bucket"}, r"`bucket` 'My_Bucket' is not a valid S3 bucket name"),
    ({"bucket": "ab"}, r"not a valid S3 bucket name"),
    ({"prefix": "a//b"}, r"`prefix` 'a//b' must be a plain key path"),
    ({"prefix": "a/../b"}, r"must be a plain key path"),
    ({"part_size_mb": 4}, r"part_size_mb\n.*greater than or equal to 5"),
    ({"max_workers": 0}, r"max_workers\n.*greater than or equal to 1"),
    ({"endpont": "typo:9000"}, r"endpont\n.*Extra inputs are not permitted"),
])
def test_s3_validators_name_the_field(fields: dict, match: str) -> None:
    base = {"endpoint": "minio:9000", "bucket": "t2s-artifacts"}
    with pytest.raises(ValidationError, match=match):
        S3StoreConfig.model_validate({**base, **fields})


def test_prefix_is_normalised() -> None:
    assert S3StoreConfig(endpoint="m:9000", bucket="bkt", prefix="/team/a/").prefix == "team/a"


class _Run(BaseModel):
    """Stands in for the run config: the store section nested one level down, as in run.yaml."""

    store: StoreConfig


@pytest.mark.parametrize("key", ["secret_key", "aws_secret_access_key", "access_key", "AWS_ACCESS_KEY_ID",
                                 "session_token", "password"])
def test_keys_in_yaml_are_refused_and_never_echoed(key: str) -> None:
    s3 = {"endpoint": "minio:9000", "bucket": "bkt", key: "SUPER-SECRET-VALUE"}
    doc = {"store": {"kind": "s3", "s3": s3}}
    with pytest.raises(ValidationError) as info:
        _Run.model_validate(doc)
    text = f"{info.value}\n{info.value.json()}"
    assert "S3 keys never go in the config file" in text
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in text and "credentials_dir" in text
    assert "SUPER-SECRET-VALUE" not in text
