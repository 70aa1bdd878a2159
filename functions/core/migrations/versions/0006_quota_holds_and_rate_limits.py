"""quota_holds (what each instance or backup takes of its project's quota) and
rate_limit_windows (API rate-limit counters shared by every function instance); the usage
of existing instances and backups is counted in

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 06:00:00
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('quota_holds',
    sa.Column('owner_id', sa.String(length=36), nullable=False),
    sa.Column('resource', sa.String(length=255), nullable=False),
    sa.Column('owner_type', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('amount', sa.Integer(), nullable=False),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.Column('updated', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('owner_id', 'resource', name=op.f('pk_quota_holds'))
    )
    with op.batch_alter_table('quota_holds', schema=None) as batch_op:
        batch_op.create_index('ix_quota_holds_tenant', ['tenant_id', 'resource'], unique=False)

    op.create_table('rate_limit_windows',
    sa.Column('tenant_id', sa.String(length=255), nullable=False),
    sa.Column('limit_key', sa.String(length=64), nullable=False),
    sa.Column('window_start', sa.DateTime(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'limit_key', 'window_start', name=op.f('pk_rate_limit_windows'))
    )
    with op.batch_alter_table('rate_limit_windows', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rate_limit_windows_window_start'), ['window_start'], unique=False)

    _count_existing_usage()


def _count_existing_usage() -> None:
    """Instances and backups created before quotas were enforced hold what they use, so the
    counters start right (Trove's defaults: an instance takes 1 instance, its flavor's RAM
    and its volume size; a backup takes 1 backup)."""
    bind = op.get_bind()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    instances = bind.execute(sa.text(
        "SELECT i.id, i.tenant_id, COALESCE(f.ram, 0), COALESCE(i.volume_size, 0) FROM instances i "
        "LEFT JOIN flavors f ON f.id = i.flavor_id WHERE i.deleted = :no"
    ), {"no": False}).all()
    backups = bind.execute(sa.text("SELECT id, tenant_id FROM backups WHERE deleted = :no"), {"no": False}).all()
    holds = []
    for iid, tenant, ram, volume in instances:
        for resource, amount in (("instances", 1), ("ram", ram), ("volumes", volume)):
            holds.append({"owner_id": iid, "resource": resource, "owner_type": "instance", "tenant_id": tenant,
                          "amount": amount, "created": now, "updated": now})
    for bid, tenant in backups:
        holds.append({"owner_id": bid, "resource": "backups", "owner_type": "backup", "tenant_id": tenant,
                      "amount": 1, "created": now, "updated": now})
    if not holds:
        return
    table = sa.table('quota_holds', *(sa.column(c) for c in holds[0]))
    bind.execute(table.insert(), holds)
    usage: dict[tuple[str, str], int] = defaultdict(int)
    for h in holds:
        usage[(h["tenant_id"], h["resource"])] += h["amount"]
    for (tenant, resource), in_use in usage.items():
        updated = bind.execute(sa.text(
            "UPDATE quota_usages SET in_use = in_use + :n, updated = :now WHERE tenant_id = :t AND resource = :r"
        ), {"n": in_use, "now": now, "t": tenant, "r": resource}).rowcount
        if not updated:
            bind.execute(sa.text(
                "INSERT INTO quota_usages (id, tenant_id, resource, in_use, reserved, created, updated) "
                "VALUES (:id, :t, :r, :n, 0, :now, :now)"
            ), {"id": str(uuid.uuid4()), "t": tenant, "r": resource, "n": in_use, "now": now})


def downgrade() -> None:
    with op.batch_alter_table('rate_limit_windows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rate_limit_windows_window_start'))
    op.drop_table('rate_limit_windows')
    with op.batch_alter_table('quota_holds', schema=None) as batch_op:
        batch_op.drop_index('ix_quota_holds_tenant')
    op.drop_table('quota_holds')
    # Without the holds the counters mean nothing (nothing used them before): a later
    # upgrade counts everything in again.
    op.execute("DELETE FROM quota_usages")
