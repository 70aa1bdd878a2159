"""datastore_versions.image_id holds a binaries location on the local platform: 255 chars

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 06:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A Glance id on OpenStack, a directory of server binaries locally (functions/core/upgrades.py).
    with op.batch_alter_table('datastore_versions') as batch:
        batch.alter_column('image_id', existing_type=sa.String(length=36), type_=sa.String(length=255),
                           existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('datastore_versions') as batch:
        batch.alter_column('image_id', existing_type=sa.String(length=255), type_=sa.String(length=36),
                           existing_nullable=True)
