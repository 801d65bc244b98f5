"""`returns_within`, the check on every leg row, as a PL/pgSQL loop instead of an SQL function.

Why: a check constraint is planned again by every statement that writes the table, and planning it tries to
inline the SQL function, which parses and analyzes its body each time; the body then runs as a query of its
own for each row. Placing and dispatching write legs in every batch. Measured with perf on the order flow:
~7-10 % of all Postgres CPU went to preparing this one constraint. A PL/pgSQL function is never inlined, and
its comparisons are simple expressions evaluated without a query. Same rule: every returned quantity is
between 0 and its line's quantity (positions beyond the shorter array, and NULLs, are not judged: the
cardinality constraint and NOT NULL columns cover them).

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE OR REPLACE FUNCTION returns_within(quantities bigint[], returned bigint[]) RETURNS boolean
        LANGUAGE plpgsql IMMUTABLE AS $$
        DECLARE
            q0 integer := coalesce(array_lower(quantities, 1), 1);
            r0 integer := coalesce(array_lower(returned, 1), 1);
        BEGIN
            FOR k IN 0 .. least(coalesce(cardinality(quantities), 0), coalesce(cardinality(returned), 0)) - 1 LOOP
                IF returned[r0 + k] < 0 OR returned[r0 + k] > quantities[q0 + k] THEN
                    RETURN false;
                END IF;
            END LOOP;
            RETURN true;
        END
        $$""")


def downgrade() -> None:
    op.execute("""
        CREATE OR REPLACE FUNCTION returns_within(quantities bigint[], returned bigint[]) RETURNS boolean
        LANGUAGE sql IMMUTABLE AS $$
            SELECT coalesce(bool_and(r BETWEEN 0 AND q), true) FROM unnest(quantities, returned) AS u(q, r)
        $$""")
