"""Where new data arrives, how long an unfinished file is waited for, and the inbox's limits."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from .home import DselHome

#: Files larger than this are set aside, never copied (``DSEL_INBOX_MAX_BYTES``).
MAX_BYTES = 2 << 30
#: Ticks a file may fail (scan, registration, archive) before it is set aside.
MAX_ATTEMPTS = 3


class InboxSettings(dg.ConfigurableResource):
    """The inbox folder the inbox sensor watches (default ``DSEL_HOME/inbox``, ``DSEL_INBOX``
    overrides), the grace period for files that stay unfinished (``DSEL_INBOX_GRACE_S``), the
    largest file taken (``DSEL_INBOX_MAX_BYTES``, default 2 GiB) and how many ticks a file may
    fail before it is set aside to ``inbox/rejected/`` (``DSEL_INBOX_MAX_ATTEMPTS``, default 3)."""

    path: str = Field(description="Folder watched for new data files")
    grace_seconds: float = Field(
        default=600.0, description="A file still unreadable this long after its last change is ingested as it is"
    )
    max_file_bytes: int = Field(
        default=MAX_BYTES, gt=0, description="A larger file is set aside to inbox/rejected/, never copied"
    )
    max_attempts: int = Field(
        default=MAX_ATTEMPTS,
        ge=1,
        description="Ticks a file may fail (read, registration, move) before it is set aside to inbox/rejected/",
    )

    @classmethod
    def from_env(cls, home: DselHome) -> InboxSettings:
        return cls(
            path=os.environ.get("DSEL_INBOX") or str(home.inbox),
            grace_seconds=float(os.environ.get("DSEL_INBOX_GRACE_S", "600")),
            max_file_bytes=int(os.environ.get("DSEL_INBOX_MAX_BYTES", str(MAX_BYTES))),
            max_attempts=int(os.environ.get("DSEL_INBOX_MAX_ATTEMPTS", str(MAX_ATTEMPTS))),
        )
