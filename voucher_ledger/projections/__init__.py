"""The read side: Postgres read models (one module each), the projector that applies them, rebuild,
verify, time travel, the queries the API serves, and the migrations."""
