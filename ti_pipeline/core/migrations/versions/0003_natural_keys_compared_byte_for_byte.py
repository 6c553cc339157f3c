"""natural keys compared byte for byte

Revision ID: 0003
Revises: 0002

On MySQL/MariaDB the text key columns took the server's default collation (``utf8mb4_general_ci`` on
MariaDB), which makes one row of keys that differ only in case or accents; they become
``utf8mb4_bin``, as SQLite and TiDB compare them already. A column already binary (TiDB's default) is
left as it is: TiDB cannot change the collation of an indexed column to another. Converting to a stricter
comparison never makes two stored keys equal, so no row is lost.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, length) of every text primary-key column (schema.key_text); all NOT NULL.
KEY_COLUMNS = (
    ('ioc_domains', 'domain', 253),
    ('ioc_tokens', 'token', 255),
    ('ioc_ips', 'address', 45),
    ('file_extension_classification', 'extension', 64),
    ('customer_ioc', 'org_id', 64),
    ('customer_ioc', 'ioc_type', 16),
    ('customer_ioc', 'value', 255),
    ('submission_ledger', 'submission_id', 128),
    ('threat_actors', 'actor_id', 128),
    ('malware_families', 'family_id', 128),
    ('actor_techniques', 'actor_id', 128),
    ('actor_techniques', 'technique_id', 16),
    ('sync_state', 'source', 64),
    ('partition_locks', 'asset', 128),
    ('partition_locks', 'partition_key', 64),
    ('request_budgets', 'service', 64),
)


def _collations() -> dict[tuple[str, str], str | None]:
    rows = op.get_bind().execute(sa.text(
        "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
    ))
    return {(table, column): collation for table, column, collation in rows}


def _convert(collation: str) -> None:
    if op.get_bind().dialect.name not in ('mysql', 'mariadb'):
        return  # SQLite compares text byte for byte already
    # Offline (the DDL a DBA reviews) every column is altered: altering to the collation it has is a no-op.
    found = {} if context.is_offline_mode() else _collations()
    for table, column, length in KEY_COLUMNS:
        if found.get((table, column)) != collation:
            # Names from the list above, never input; ALTER takes no bound parameters.
            op.execute(
                f"ALTER TABLE `{table}` MODIFY `{column}` VARCHAR({length}) "
                f"CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL"
            )


def upgrade() -> None:
    _convert('utf8mb4_bin')


def downgrade() -> None:
    # Fails with a duplicate key where two stored keys differ only in case or accents: keep them, or drop one first.
    _convert('utf8mb4_general_ci')
