"""The balance check runs once per statement instead of once per posting.

0001 re-summed a journal for every posting inserted (a deferred row trigger): a transaction posting the
journals of 200 orders ran 1,600 such checks at commit. The statement trigger below checks, once per INSERT,
every journal the statement touched, with one indexed query keyed by the statement's transition table. It is
also stricter: a journal must be whole (balanced, at least two postings) at the end of the statement that
writes its postings — the store always writes a journal's postings in one statement.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP TRIGGER postings_balance ON postings")
    op.execute("""
        CREATE FUNCTION journals_must_balance() RETURNS trigger
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
        DECLARE
            bad record;
        BEGIN
            SELECT p.journal_id, sum(p.amount_fen) AS total, count(*) AS legs INTO bad
            FROM postings p
            WHERE p.journal_id = ANY (ARRAY(SELECT DISTINCT journal_id FROM new_postings))
            GROUP BY p.journal_id
            HAVING sum(p.amount_fen) <> 0 OR count(*) < 2
            LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'journal % does not balance: % postings sum to % fen',
                    bad.journal_id, bad.legs, bad.total USING ERRCODE = 'check_violation';
            END IF;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE TRIGGER postings_balance AFTER INSERT ON postings
        REFERENCING NEW TABLE AS new_postings
        FOR EACH STATEMENT EXECUTE FUNCTION journals_must_balance()""")


def downgrade() -> None:
    op.execute("DROP TRIGGER postings_balance ON postings")
    op.execute("DROP FUNCTION journals_must_balance()")
    op.execute("""
        CREATE CONSTRAINT TRIGGER postings_balance AFTER INSERT ON postings
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_must_balance()""")
