"""The `omo` command: starts the whole stack (embedded Postgres and NATS unless DATABASE_URL / NATS_URL point
elsewhere), seeds demo data, runs a demo order, and reports status."""
