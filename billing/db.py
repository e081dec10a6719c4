"""The billing tables' declarative base (`BillingBase`, a metadata of its own) and the
column types and naming every table of moeserve shares — billing's and, reused from here
since `billing` never imports `control_plane`, the control plane's. The control plane's
Alembic environment targets both metadatas."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, ClassVar

from sqlalchemy import JSON, DateTime, MetaData, Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

# Fixed constraint names, so migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass a UTC-aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ExactNumeric(TypeDecorator[Decimal]):
    """`Numeric(precision, scale)` on PostgreSQL; decimal text on SQLite, whose NUMERIC
    columns hold floats (a REAL keeps ~16 significant digits, so 1234.567891234 would read
    back as 1234.567891234000012...). Values are rounded half-even to `scale` places on the
    way in on both backends, so a value reads back identically everywhere. Sum such columns
    in Python, not SQL, on SQLite."""

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int) -> None:
        super().__init__(precision, scale)
        self.precision = precision
        self.scale = scale

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(self.precision + 10))
        return dialect.type_descriptor(Numeric(self.precision, self.scale))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = Decimal(value).quantize(Decimal(1).scaleb(-self.scale), rounding=ROUND_HALF_EVEN)
        return str(exact) if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


# DBUs keep every digit a rate card can produce (3-decimal rates / 10^6 need 9 places;
# prorated seconds need more): never rounded. Money is rounded once, at invoice lines.
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
