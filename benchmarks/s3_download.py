"""S3 downloads: the store's fetch (parallel ranged GETs, sha256 as the bytes arrive) against boto3, one session.

Starts SeaweedFS (``weed mini``, the test server of ``tests/servers.py``) on 127.0.0.1, uploads one
big file and a tree of small files, then times, in interleaved rounds:

- ``t2s``: :func:`text2sql_core.store.manifest.fetch` of the published prefix (download + verified
  size and sha256 of every file, what a stage does);
- ``boto3``: ``download_file`` with a ``TransferConfig`` of the same concurrency and part size, a
  thread pool of ``max_workers`` over the tree's files, then the sha256 pass a verified fetch needs
  (``boto3_verified``); ``boto3_download_only`` without it.

Prints one JSON document (``--out`` writes it too): seconds (median over rounds) and the ratios
``boto3_verified / t2s`` (> 1: the store is faster).

    python benchmarks/s3_download.py --big-mb 256 --files 50 --out benchmarks/results/s3_download_cpu_2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import SeaweedFS
from text2sql_core.store.manifest import fetch, file_sha256, publish


def _boto3_client(server):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=f"http://{server.endpoint}", aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1",
                        config=Config(max_pool_connections=64, s3={"addressing_style": "path"}))


def _boto3_get(client, bucket: str, keys: list[str], dest: Path, *, workers: int, part_mb: int,
               concurrency: int, verify: bool) -> None:
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=part_mb * 1024 * 1024, multipart_chunksize=part_mb * 1024 * 1024,
                         max_concurrency=concurrency, use_threads=True)

    def one(key: str) -> None:
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target), Config=cfg)
        if verify:
            file_sha256(target)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big-mb", type=int, default=256, help="size of the one big file (MiB)")
    parser.add_argument("--files", type=int, default=50, help="files of 5 MiB in the tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="t2s-s3-bench-") as tmp:
        root = Path(tmp)
        weed = SeaweedFS(root / "weed", tls=False).start(timeout=60)
        try:
            server = weed.s3
            store = server.open("t2s-bench")
            cfg = store.cfg
            src_big, src_tree = root / "src-big", root / "src-tree"
            src_big.mkdir()
            with open(src_big / "model.safetensors", "wb") as f:
                f.writelines(os.urandom(1024 * 1024) for _ in range(args.big_mb))
            for i in range(args.files):
                (src_tree / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
                (src_tree / f"d{i % 10}" / f"f{i:03d}.bin").write_bytes(os.urandom(5 * 1024 * 1024))
            now = datetime.now(UTC)
            manifests = {name: publish(store, f"bench/{name}", src, run_id="bench", step=name, kind="bench",
                                       config_hash="0" * 64, metrics={}, started_at=now)
                         for name, src in (("big", src_big), ("tree", src_tree))}
            client = _boto3_client(server)
            results: dict[str, dict[str, list[float]]] = {n: {"t2s": [], "boto3_verified": [],
                                                              "boto3_download_only": []} for n in manifests}
            for _ in range(args.rounds):
                for name, manifest in manifests.items():
                    keys = [f"{store._obj(f'bench/{name}/{e.path}')}" for e in manifest.files]
                    for how in ("t2s", "boto3_verified", "boto3_download_only"):
                        dest = root / f"dest-{name}-{how}"
                        shutil.rmtree(dest, ignore_errors=True)
                        t0 = time.perf_counter()
                        if how == "t2s":
                            fetch(store, f"bench/{name}", dest, manifest=manifest)
                        else:
                            _boto3_get(client, store.bucket, keys, dest, workers=cfg.max_workers,
                                       part_mb=cfg.part_size_mb, concurrency=cfg.multipart_workers,
                                       verify=how == "boto3_verified")
                        results[name][how].append(time.perf_counter() - t0)
                        shutil.rmtree(dest, ignore_errors=True)
        finally:
            weed.stop()
    doc: dict[str, object] = {"server": "SeaweedFS weed mini on 127.0.0.1", "rounds": args.rounds,
                              "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                              "store_settings": {"part_size_mb": cfg.part_size_mb,
                                                 "multipart_workers": cfg.multipart_workers,
                                                 "max_workers": cfg.max_workers}}
    for name, runs in results.items():
        med = {how: round(statistics.median(v), 3) for how, v in runs.items()}
        size_mb = args.big_mb if name == "big" else 5 * args.files
        doc[name] = {"mib": size_mb, "seconds": med,
                     "t2s_mib_per_s": round(size_mb / med["t2s"], 1),
                     "speedup_vs_boto3_verified": round(med["boto3_verified"] / med["t2s"], 3),
                     "speedup_vs_boto3_download_only": round(med["boto3_download_only"] / med["t2s"], 3)}
    text = json.dumps(doc, indent=2) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
