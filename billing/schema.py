"""Every billing table, registered on `BillingBase.metadata`: import `METADATA` from here
(not from `billing.db`) so that migrations and schema checks see every table."""

from __future__ import annotations

from sqlalchemy import MetaData

import billing.capacity
import billing.invoicing.models
import billing.ledger.models
import billing.records
import billing.stripe_gateway.models  # noqa: F401  (all imported for their tables)
from billing.db import BillingBase

METADATA: MetaData = BillingBase.metadata
