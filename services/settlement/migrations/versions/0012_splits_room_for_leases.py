"""Room on each page of `splits` for the sharing job's lease.

Every pass of the sharing job leases the splits it works on (`lease_until`, `attempts`: no index covers them),
so the lease can be a heap-only update that touches no index, but only if the row's page has room for the new
version: at the default fill factor of 100 every page is full when its splits are inserted, and each lease
wrote a new entry into all four of the table's indexes. Measured on passes of 50 splits: half the lease
statement's time.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE splits SET (fillfactor = 70)")


def downgrade() -> None:
    op.execute("ALTER TABLE splits RESET (fillfactor)")
