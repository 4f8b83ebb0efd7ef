"""Asset checks defined outside the assets that own them."""

import dagster as dg

ASSET_CHECKS: list[dg.AssetChecksDefinition] = []
