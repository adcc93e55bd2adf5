"""Where new data arrives and how long an unfinished file is waited for."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from .home import DselHome


class InboxSettings(dg.ConfigurableResource):
    """The inbox folder the inbox sensor watches (default ``DSEL_HOME/inbox``, ``DSEL_INBOX``
    overrides) and the grace period for files that stay unfinished (``DSEL_INBOX_GRACE_S``)."""

    path: str = Field(description="Folder watched for new data files")
    grace_seconds: float = Field(
        default=600.0, description="A file still unreadable this long after its last change is ingested as it is"
    )

    @classmethod
    def from_env(cls, home: DselHome) -> InboxSettings:
        return cls(
            path=os.environ.get("DSEL_INBOX") or str(home.inbox),
            grace_seconds=float(os.environ.get("DSEL_INBOX_GRACE_S", "600")),
        )
