"""The double-entry ledger (accounts, journals, postings) and the order splits it records.

The database itself guarantees the ledger's two invariants, whatever code writes to it:
- every journal balances: a deferred constraint trigger re-sums each journal touched by a transaction at
  commit, so an unbalanced journal can never commit;
- journals and postings are append-only: updates, deletes and truncation are refused (a correction is a new
  journal).
The cached `accounts.balance_fen` is maintained by the service in the same statement that inserts the
postings, so balance == Σ postings for every account.

Revision ID: 0001
Revises:
"""

from alembic import op

from services.runtime.tables import create_platform_tables, drop_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables(op)
    # Party types, purposes and kinds are the domain's enums (services/settlement/domain.py); they grow with
    # the ledger, so they are not frozen into CHECK constraints here.
    op.execute("""
        CREATE TABLE accounts (
            account_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            party_type  text   NOT NULL,
            party_id    text   NOT NULL,
            purpose     text   NOT NULL,
            -- Σ amount_fen of the account's postings, updated in the posting transaction.
            balance_fen bigint NOT NULL DEFAULT 0,
            created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            UNIQUE (party_type, party_id, purpose)
        )""")
    op.execute("""
        CREATE TABLE journals (
            journal_id   text PRIMARY KEY,
            kind         text NOT NULL,
            -- The business fact the journal records (e.g. ORDER_SPLIT/<order_id>): posted at most once.
            business_key text NOT NULL UNIQUE,
            order_id     text,
            created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")
    op.execute("CREATE INDEX journals_order ON journals (order_id) WHERE order_id IS NOT NULL")
    op.execute("""
        CREATE TABLE postings (
            posting_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            journal_id text   NOT NULL REFERENCES journals,
            account_id bigint NOT NULL REFERENCES accounts,
            amount_fen bigint NOT NULL CHECK (amount_fen <> 0)
        )""")
    op.execute("CREATE INDEX postings_journal ON postings (journal_id)")
    # Statements and reconciliation read an account's postings in posting order.
    op.execute("CREATE INDEX postings_account ON postings (account_id, posting_id)")

    # SET search_path FROM CURRENT pins the service schema, so the check also holds for a session (an
    # operator, a test) whose search_path is different.
    op.execute("""
        CREATE FUNCTION journal_must_balance() RETURNS trigger
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
        DECLARE
            total numeric;
            legs  bigint;
        BEGIN
            SELECT coalesce(sum(amount_fen), 0), count(*) INTO total, legs
            FROM postings WHERE journal_id = NEW.journal_id;
            IF total <> 0 OR legs < 2 THEN
                RAISE EXCEPTION 'journal % does not balance: % postings sum to % fen',
                    NEW.journal_id, legs, total USING ERRCODE = 'check_violation';
            END IF;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE CONSTRAINT TRIGGER postings_balance AFTER INSERT ON postings
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_must_balance()""")
    op.execute("""
        CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: post a correcting journal instead', TG_TABLE_NAME
                USING ERRCODE = 'restrict_violation';
        END $$""")
    for table in ("journals", "postings"):
        op.execute(f"""
            CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only()""")
        op.execute(f"""
            CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only()""")

    # An order is split once: the primary key is the business-level idempotency of the OrderPaid consumer.
    # The split row is claimed before its journals are posted, hence the deferred journal references.
    op.execute("""
        CREATE TABLE splits (
            order_id           text   PRIMARY KEY,
            brand_id           text   NOT NULL,
            dealer_id          text   NOT NULL,
            store_id           text   NOT NULL,
            provider_txn_id    text   NOT NULL,
            paid_fen           bigint NOT NULL CHECK (paid_fen > 0),
            cost_fen           bigint NOT NULL CHECK (cost_fen >= 0),
            brand_funded_discount_fen bigint NOT NULL CHECK (brand_funded_discount_fen >= 0),
            payment_journal_id text   NOT NULL REFERENCES journals DEFERRABLE INITIALLY DEFERRED,
            split_journal_id   text   NOT NULL REFERENCES journals DEFERRABLE INITIALLY DEFERRED,
            paid_at            timestamptz,
            settled_at         timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")
    op.execute("""
        CREATE TABLE split_legs (
            order_id      text     NOT NULL REFERENCES splits,
            leg           smallint NOT NULL,
            role          text     NOT NULL,
            receiver_type text     NOT NULL,
            receiver_id   text     NOT NULL,
            -- A split never takes money from a receiver: a shortfall is a receivable instead.
            amount_fen    bigint   NOT NULL CHECK (amount_fen >= 0),
            PRIMARY KEY (order_id, leg)
        )""")
    op.execute("""
        CREATE TABLE split_receivables (
            order_id      text   NOT NULL REFERENCES splits,
            reason        text   NOT NULL,
            creditor_type text   NOT NULL,
            creditor_id   text   NOT NULL,
            debtor_type   text   NOT NULL,
            debtor_id     text   NOT NULL,
            amount_fen    bigint NOT NULL CHECK (amount_fen > 0),
            journal_id    text   NOT NULL REFERENCES journals DEFERRABLE INITIALLY DEFERRED,
            PRIMARY KEY (order_id, reason)
        )""")


def downgrade() -> None:
    for table in ("split_receivables", "split_legs", "splits", "postings", "journals", "accounts"):
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP FUNCTION ledger_is_append_only()")
    op.execute("DROP FUNCTION journal_must_balance()")
    drop_platform_tables(op)
