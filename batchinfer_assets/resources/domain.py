"""Which domain the code location runs, for what needs it outside a pipeline run (e.g. the labels sensor)."""

import dagster as dg
from pydantic import Field

from batchinfer_assets.domain import BUILT_IN_DOMAIN, DOMAIN_VARIABLE, Domain, load_domain


class DomainResource(dg.ConfigurableResource):
    """The domain by reference: config stays a string, the Domain object is loaded when asked for."""

    reference: str = Field(
        default=BUILT_IN_DOMAIN,
        description=f"module.path:attribute of the domain (as {DOMAIN_VARIABLE} names it); default: the built-in one.",
    )

    def load(self) -> Domain:
        """The Domain the reference names, or an error naming what is wrong with it."""
        return load_domain(self.reference)
