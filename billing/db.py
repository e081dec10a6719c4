"""The billing tables' declarative base (`BillingBase`, a metadata of its own) and billing's
column aliases (`Dbu`, `Money`, `DollarsPerDbu`) over the shared column types of
`persistence.columns`. The control plane's Alembic environment targets both metadatas."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar

from sqlalchemy import JSON, MetaData
from sqlalchemy.orm import DeclarativeBase, mapped_column

from persistence.columns import NAMING, ExactNumeric, UtcDateTime

# DBUs keep 18 places: every digit token prices (3-decimal rates / 10^6 need 9) and
# provisioned rates produce; money is rounded once, at invoice lines.
DBU_SCALE = 18
Dbu = Annotated[Decimal, mapped_column(ExactNumeric(38, DBU_SCALE))]
Money = Annotated[Decimal, mapped_column(ExactNumeric(20, 2))]
DollarsPerDbu = Annotated[Decimal, mapped_column(ExactNumeric(20, 6))]


class BillingBase(DeclarativeBase):
    """Declarative base of the billing tables."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, str]: JSON,
        dict[str, Any]: JSON,
    }
