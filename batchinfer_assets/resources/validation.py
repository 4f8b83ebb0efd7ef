"""How much bad data a day may carry before it is blocked."""

import dagster as dg
from pydantic import Field


class ValidationPolicyResource(dg.ConfigurableResource):
    """Limits applied when raw rows are validated and quarantined."""

    max_invalid_fraction: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Share of a day's rows that may be quarantined before the day is blocked from scoring.",
    )
