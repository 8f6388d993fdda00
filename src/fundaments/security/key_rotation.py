"""The key-rotation part of the facade: re-encrypting a column of envelopes in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fundaments.encryption import EncryptionService
from fundaments.errors import DecryptionError, InvalidArgument
from fundaments.security._core import SecurityCore
from fundaments.store import Transaction
from fundaments.store.reencrypt import (
    MAX_BATCH_SIZE,
    MAX_FAILED_KEYS,
    ColumnRef,
    ReencryptReport,
    count_rows,
    read_batch,
    swap_value,
)


class KeyRotationPart(SecurityCore):
    """``reencrypt_column``: move stored envelopes to the current key, resumably."""

    async def reencrypt_column(
        self,
        table: str,
        column: str,
        *,
        key_column: str = "id",
        context_column: str | None = None,
        batch_size: int = 500,
        progress: Callable[[int, int], object] | None = None,
    ) -> ReencryptReport:
        """Re-encrypt every envelope in ``table.column`` under the current key, in place.

        Rows are read in ``key_column`` order, ``batch_size`` at a time; each batch is one
        transaction (with its ``keys.reencrypted`` audit event), so a killed run loses nothing and
        running it again skips the rows already under the current key. ``context_column`` names
        the column holding each value's encryption context. A value that does not decrypt (not an
        envelope, a key no longer configured, another context) is counted in ``failed`` and left
        as it is; a value changed by someone else meanwhile is left to that writer. The plaintext
        never leaves the encryption service. ``progress(rows scanned, rows in the table)`` runs
        after each batch.
        """
        encryption = self._require_encryption()
        ref = ColumnRef.build(table, column, key_column, context_column)
        valid_size = isinstance(batch_size, int) and not isinstance(batch_size, bool)
        if not valid_size or not 0 < batch_size <= MAX_BATCH_SIZE:
            raise InvalidArgument(f"batch_size must be an integer between 1 and {MAX_BATCH_SIZE}")
        db = self._require_db()
        audit = self._require_audit()
        report = ReencryptReport(table=table, column=column, key_id=encryption.key_id)
        report.total = await count_rows(db, ref)
        if progress is not None:
            progress(0, report.total)
        after: Any = None
        while True:
            async with self._transaction() as tx:
                rows = await read_batch(tx, ref, after, batch_size)
                before = (report.reencrypted, report.failed)
                for row in rows:
                    await self._reencrypt_row(tx, ref, row, encryption, report)
                done, failed = report.reencrypted - before[0], report.failed - before[1]
                if done or failed:  # committed with the rows it describes
                    await audit.record(
                        "keys.reencrypted",
                        tx=tx,
                        outcome="failure" if failed else "success",
                        details={
                            "table": table,
                            "column": column,
                            "key_id": report.key_id,
                            "reencrypted": done,
                            "failed": failed,
                        },
                    )
            if not rows:
                break
            after = rows[-1][0]
            if progress is not None:
                progress(report.scanned, report.total)
            if len(rows) < batch_size:
                break
        return report

    async def _reencrypt_row(
        self,
        tx: Transaction,
        ref: ColumnRef,
        row: Any,
        encryption: EncryptionService,
        report: ReencryptReport,
    ) -> None:
        report.scanned += 1
        key, value = row[0], row[1]
        if value is None or len(value) == 0:
            report.empty += 1
            return
        context = None if ref.context is None or row[2] is None else str(row[2])
        try:
            if not encryption.needs_reencrypt(value):
                report.current += 1
                return
            envelope = encryption.reencrypt(value, context=context)
        except DecryptionError:
            report.failed += 1
            if len(report.failed_keys) < MAX_FAILED_KEYS:
                report.failed_keys.append(key)
            return
        old_value = value if isinstance(value, str) else bytes(value)
        new_value = envelope if isinstance(value, str) else envelope.encode("ascii")  # keep the type
        if await swap_value(tx, ref, key, old_value, new_value):
            report.reencrypted += 1
        else:
            report.changed_meanwhile += 1
