"""Pack a dataset directory into tar shards of bounded size for transport, and unpack them.

Each shard holds its audio files and ``manifests/<shard>.jsonl`` with their rows, so any subset of
shards is a usable dataset; ``unpack_shards`` extracts them and merges the manifests.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from training.synth.manifest import MANIFEST_NAME, ManifestRow, read_manifest, write_manifest

TAR_OVERHEAD_BYTES = 1024
"""Header and padding per tar member, counted so shards stay under the limit."""


def _flush(shard_dir: Path, number: int, dataset: Path, rows: list[ManifestRow]) -> Path:
    path = shard_dir / f"part-{number:05d}.tar"
    lines = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows).encode()
    with tarfile.open(path, "w") as tar:
        for row in rows:
            tar.add(dataset / row.audio, arcname=row.audio)
        info = tarfile.TarInfo(f"manifests/part-{number:05d}.jsonl")
        info.size = len(lines)
        tar.addfile(info, io.BytesIO(lines))
    return path


def pack_shards(dataset: Path, shard_dir: Path, max_mb: float = 45.0) -> list[Path]:
    """Split ``dataset`` (holding manifest.jsonl) into tar shards of at most ``max_mb`` MiB each."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    limit = max_mb * 2**20
    rows = read_manifest(dataset / MANIFEST_NAME)
    shards, pending, size = [], [], 2 * TAR_OVERHEAD_BYTES + 256 * len(rows) + 10240
    for row in tqdm(rows, desc="packing", unit="file"):
        row_bytes = (dataset / row.audio).stat().st_size + TAR_OVERHEAD_BYTES + 512 + len(row.text) * 2
        if pending and size + row_bytes > limit:
            shards.append(_flush(shard_dir, len(shards), dataset, pending))
            pending, size = [], 10240 + 2 * TAR_OVERHEAD_BYTES
        pending.append(row)
        size += row_bytes
    if pending:
        shards.append(_flush(shard_dir, len(shards), dataset, pending))
    return shards


def unpack_shards(shards: list[Path], dataset: Path) -> Path:
    """Extract shards into ``dataset`` and write the merged manifest.jsonl; returns its path."""
    dataset.mkdir(parents=True, exist_ok=True)
    for shard in tqdm(sorted(shards), desc="unpacking", unit="shard"):
        with tarfile.open(shard) as tar:
            tar.extractall(dataset, filter="data")
    rows = [row for part in sorted((dataset / "manifests").glob("*.jsonl")) for row in read_manifest(part)]
    write_manifest(dataset / MANIFEST_NAME, rows)
    return dataset / MANIFEST_NAME
