"""What the store raises for a database it cannot use."""


class StateDatabaseError(RuntimeError):
    """The state database cannot be opened (busy past the wait, unreachable, or not a database)."""
