"""Declarative base and the column types every model shares."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar

from sqlalchemy import MetaData, String
from sqlalchemy.orm import DeclarativeBase, mapped_column

from persistence.columns import NAMING, UtcDateTime

Id = Annotated[str, mapped_column(String(32), primary_key=True)]
Timestamp = Annotated[datetime, mapped_column(UtcDateTime())]
Name = Annotated[str, mapped_column(String(255))]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime()}
