"""Every input snapshot that was scored, kept by content hash so any day can be re-scored from its exact input.

A day's `input_snapshot` folder holds its latest input; re-landing the day replaces it, and the recorded hash
then only proves that the input changed. The archive keeps each scored snapshot under its content hash,
`{storage}/input_snapshot_archive/sha256={hash}/` (Hive-style, readable like the tables), written once through
the store's atomic replace. `prune` removes entries older than the retention that no published day refers to.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Set

from batchinfer_assets.lib.parquet_store import LocalBackend, PartitionedParquetStore
from batchinfer_assets.tables import INPUT_SNAPSHOT, INPUT_SNAPSHOT_ARCHIVE

KEY_COLUMN = "sha256"
_COPY_ROWS = 262_144


def archive_key(content_hash: str) -> str:
    """The folder value of a hash: the hex digest (snapshot hashes read `sha256:<hex>`)."""
    return content_hash.removeprefix(f"{KEY_COLUMN}:")


class SnapshotNotArchivedError(LookupError):
    """A reproduction names an input snapshot hash the archive does not hold."""


class SnapshotArchive:
    """Scored input snapshots by content hash, beside the tables of one store."""

    def __init__(self, store: PartitionedParquetStore) -> None:
        self.tables = store
        self.store = store.keyed_by(KEY_COLUMN)

    def uri(self, content_hash: str) -> str:
        return self.store.partition_uri(INPUT_SNAPSHOT_ARCHIVE, archive_key(content_hash))

    def has(self, content_hash: str) -> bool:
        return self.store.has_partition(INPUT_SNAPSHOT_ARCHIVE, archive_key(content_hash))

    def keep(self, day: str, content_hash: str) -> bool:
        """Archive the day's current snapshot under `content_hash` unless it is there already; whether it copied."""
        if self.has(content_hash):
            return False
        key = archive_key(content_hash)
        if isinstance(self.tables.backend, LocalBackend) and isinstance(self.store.backend, LocalBackend):
            # The same files, hard-linked: no bytes copied, and the layout (row groups, files) stays the original's,
            # which a reproduction needs to batch as the first scoring did. Our writers replace a day by renaming
            # new files in, never by rewriting one, so the links keep the scored bytes.
            with self.store.backend.replacing(INPUT_SNAPSHOT_ARCHIVE, key) as staging:
                for part in self.tables.partition_files(INPUT_SNAPSHOT, day):
                    try:
                        os.link(part, staging / part.name)
                    except OSError:  # another file system, or links not allowed: copy
                        shutil.copy2(part, staging / part.name)
            return True
        schema = self.tables.schema(INPUT_SNAPSHOT, day)
        with self.store.partition_writer(INPUT_SNAPSHOT_ARCHIVE, key, schema) as writer:
            for batch in self.tables.iter_batches(INPUT_SNAPSHOT, day, batch_size=_COPY_ROWS):
                writer.write(batch)
        return True

    def require(self, content_hash: str) -> None:
        """Fail naming the hash when the archive does not hold it."""
        if not self.has(content_hash):
            known = sorted(self.store.list_partitions(INPUT_SNAPSHOT_ARCHIVE))
            raise SnapshotNotArchivedError(
                f"no archived input snapshot {content_hash} under {self.store.table_uri(INPUT_SNAPSHOT_ARCHIVE)} "
                f"({len(known)} archived{': ' + ', '.join(h[:12] for h in known[:5]) if known else ''}"
                f"{', ...' if len(known) > 5 else ''}); it was pruned or never scored here"
            )

    def prune(self, referenced: Set[str], retention_days: float, now: float | None = None) -> list[str]:
        """Remove entries archived more than `retention_days` ago that no published day refers to; the removed hashes."""
        cutoff = (time.time() if now is None else now) - retention_days * 86_400
        removed = []
        keep = {archive_key(h) for h in referenced}
        for key, written in sorted(self.store.list_partitions(INPUT_SNAPSHOT_ARCHIVE).items()):
            if written < cutoff and key not in keep:
                self.store.delete_partition(INPUT_SNAPSHOT_ARCHIVE, key)
                removed.append(f"{KEY_COLUMN}:{key}")
        return removed

