"""A posting's journal and account are checked once per statement, like its balance, instead of row by row.

The two foreign keys of `postings` ran one lookup (and took one row lock) per posting: measured on the sharing
job's posting of 50 orders' journals, they were half the statement's time. The store writes a journal with all
its postings, and creates or updates their accounts, in one statement, so the statement's end is where to check
that every new posting's journal and account exist: the statement trigger that already re-sums the journals now
does that too, probing the two primary keys with the statement's distinct journal and account ids (as the
balance check probes `postings`) and comparing the counts.

What the foreign keys also guaranteed, that a referenced row never goes away, holds by triggers: journals are
append-only (0001), and accounts are never deleted, truncated or given another id (updating a balance, the only
change the store makes, does not fire the trigger: it watches `account_id` alone).

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE postings DROP CONSTRAINT postings_journal_id_fkey")
    op.execute("ALTER TABLE postings DROP CONSTRAINT postings_account_id_fkey")
    # The probes take no parameters (a plan made with the statement's ids in hand, while the tables were
    # small, chose to scan them and was then kept), and seq scans are off here: journals and postings only
    # grow, and a plan cached while they were small must not go on reading them whole.
    op.execute("""
        CREATE OR REPLACE FUNCTION journals_must_balance() RETURNS trigger
        LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_seqscan = off AS $$
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
            -- Every journal and account the statement posted to exists: as many of them found by primary
            -- key as the statement named.
            IF (SELECT count(*) FROM journals
                WHERE journal_id = ANY (ARRAY(SELECT DISTINCT journal_id FROM new_postings)))
                   <> (SELECT count(DISTINCT journal_id) FROM new_postings)
               OR (SELECT count(*) FROM accounts
                   WHERE account_id = ANY (ARRAY(SELECT DISTINCT account_id FROM new_postings)))
                   <> (SELECT count(DISTINCT account_id) FROM new_postings)
            THEN
                SELECT n.journal_id, n.account_id INTO bad FROM new_postings n
                WHERE NOT EXISTS (SELECT 1 FROM journals j WHERE j.journal_id = n.journal_id)
                   OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account_id = n.account_id)
                LIMIT 1;
                RAISE EXCEPTION 'a posting to journal % and account % refers to one that does not exist',
                    bad.journal_id, bad.account_id USING ERRCODE = 'foreign_key_violation';
            END IF;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE FUNCTION accounts_are_kept() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'accounts are never deleted or renumbered: postings refer to them'
                USING ERRCODE = 'restrict_violation';
        END $$""")
    op.execute("""
        CREATE TRIGGER accounts_kept BEFORE DELETE OR UPDATE OF account_id ON accounts
        FOR EACH ROW EXECUTE FUNCTION accounts_are_kept()""")
    op.execute("""
        CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
        FOR EACH STATEMENT EXECUTE FUNCTION accounts_are_kept()""")


def downgrade() -> None:
    op.execute("DROP TRIGGER accounts_no_truncate ON accounts")
    op.execute("DROP TRIGGER accounts_kept ON accounts")
    op.execute("DROP FUNCTION accounts_are_kept()")
    op.execute("""
        CREATE OR REPLACE FUNCTION journals_must_balance() RETURNS trigger
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
    op.execute("ALTER TABLE postings ADD CONSTRAINT postings_account_id_fkey "
               "FOREIGN KEY (account_id) REFERENCES accounts")
    op.execute("ALTER TABLE postings ADD CONSTRAINT postings_journal_id_fkey "
               "FOREIGN KEY (journal_id) REFERENCES journals")
