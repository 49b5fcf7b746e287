"""Issue #6's benchmark: the seed's row-lock redemption against this service's command bus and
HTTP paths, on the same machine in the same run. Run it with ``python -m bench`` (see README)."""
