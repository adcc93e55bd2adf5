"""The storage boundary: the schema of the state database (and, as it moves here, every query)."""
