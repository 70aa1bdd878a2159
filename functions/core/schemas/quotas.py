"""Request body of Trove's quota update: `{"quotas": {"instances": 10, "backups": 30}}`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, RootModel, StrictInt

INT_MAX = 2**31 - 1  # quotas.hard_limit is an Integer column

Limit = Annotated[StrictInt, Field(ge=-1, le=INT_MAX)]


class QuotaLimits(RootModel[dict[str, Limit | None]]):
    """Limits by resource (instances, ram in MB, volumes in GB, backups); -1 is unlimited, a
    null leaves a limit as it is. An unknown resource is a 404, as in Trove."""
