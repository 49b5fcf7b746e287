"""Postgres read models fed by durable consumers of the event stream (next issue)."""
