"""Every billing table, registered on `BillingBase.metadata`: import `METADATA` from here
(not from `billing.db`) so that migrations and schema checks see every table."""

from __future__ import annotations

from sqlalchemy import MetaData

from billing.db import BillingBase

METADATA: MetaData = BillingBase.metadata
