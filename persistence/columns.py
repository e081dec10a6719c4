"""Column types and the constraint naming convention of every moeserve table.

- `UtcDateTime`: timezone-aware UTC in and out, on SQLite as on PostgreSQL.
- `ExactNumeric`: decimals that read back exactly on both backends.
- `PydanticJson`: a JSON column that stores a pydantic model (or a list or dict of them)
  and reads back as the model, validated, so stored documents are typed end to end.
- `EnumText`: a string enum stored as its value, read back as the member.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import JSON, DateTime, Numeric, String
from sqlalchemy.engine import Dialect
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


class PydanticJson(TypeDecorator[Any]):
    """JSON holding values of `python_type` (a pydantic model, or e.g. `list[Model]`):
    dumped in JSON mode on the way in, validated into the type on the way out. Stored values
    are immutable documents: to change one, assign a new value (SQLAlchemy sees assignments,
    not in-place edits)."""

    impl = JSON
    cache_ok = True

    def __init__(self, python_type: Any) -> None:
        super().__init__()
        self.value_type = python_type
        self._adapter: TypeAdapter[Any] = TypeAdapter(python_type)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return self._adapter.dump_python(value, mode="json", exclude_none=True)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return self._adapter.validate_python(value)

    def coerce_compared_value(self, op: Any, value: Any) -> TypeEngine[Any]:
        return JSON()


class EnumText(TypeDecorator[Any]):
    """A string enum (`enum.StrEnum`) stored as its value in a VARCHAR column: reads back as
    the enum member, and a value the enum does not know fails loudly on the way in or out."""

    impl = String
    cache_ok = True

    def __init__(self, enum_type: Any, length: int) -> None:
        super().__init__(length)
        self.enum_type = enum_type

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.enum_type(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.enum_type(value)
