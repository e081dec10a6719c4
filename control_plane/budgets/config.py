"""A budget as the API takes and shows it (Databricks' `BudgetConfiguration`), with
moeserve's extensions: `WEBHOOK_NOTIFICATION` actions (target: an https URL), the `DBU`
quantity type, and an `endpoint_name` filter clause. Stored as JSON in `budgets.config`."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from control_plane.text import StorableText

MAX_ALERTS = 10
MAX_ACTIONS = 10
MAX_VALUES = 100


class ActionType(StrEnum):
    BLOCK_USAGE = "BLOCK_USAGE"  # the gateway refuses queries in scope (429)
    WEBHOOK_NOTIFICATION = "WEBHOOK_NOTIFICATION"  # moeserve: a signed POST to `target`
    EMAIL_NOTIFICATION = "EMAIL_NOTIFICATION"  # Databricks'; refused: moeserve sends no mail


class QuantityType(StrEnum):
    LIST_PRICE_DOLLARS_USD = "LIST_PRICE_DOLLARS_USD"
    DBU = "DBU"  # moeserve: the threshold counts DBUs


class TimePeriod(StrEnum):
    MONTH = "MONTH"
    DAY = "DAY"


class TriggerType(StrEnum):
    CUMULATIVE_SPENDING_EXCEEDED = "CUMULATIVE_SPENDING_EXCEEDED"


class Operator(StrEnum):
    IN = "IN"


FilterValue = Annotated[StorableText, Field(min_length=1, max_length=255)]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class FilterClause(_Shape):
    operator: Operator = Operator.IN
    values: list[FilterValue] = Field(min_length=1, max_length=MAX_VALUES)


class TagClause(_Shape):
    key: FilterValue
    value: FilterClause


class BudgetFilter(_Shape):
    """What the budget counts: usage of these workspaces (all of the account's when absent),
    of endpoints carrying these tags (every clause must hold), of these endpoints."""

    workspace_id: FilterClause | None = None
    tags: list[TagClause] = Field(default_factory=list, max_length=MAX_VALUES)
    endpoint_name: FilterClause | None = Field(default=None, description="moeserve extension")

    @field_validator("workspace_id", mode="before")
    @classmethod
    def _ids_as_text(cls, clause: object) -> object:
        # The SDK types workspace ids as integers; moeserve's are text: accept either.
        if isinstance(clause, dict) and isinstance(clause.get("values"), list):
            return {**clause, "values": [str(v) for v in clause["values"]]}
        return clause


class ActionInput(_Shape):
    action_configuration_id: str | None = None
    action_type: ActionType
    target: Annotated[StorableText, Field(max_length=2048)] | None = None


class AlertInput(_Shape):
    alert_configuration_id: str | None = None
    time_period: TimePeriod = TimePeriod.MONTH
    trigger_type: TriggerType = TriggerType.CUMULATIVE_SPENDING_EXCEEDED
    quantity_type: QuantityType = QuantityType.LIST_PRICE_DOLLARS_USD
    quantity_threshold: Decimal = Field(ge=0, max_digits=20, decimal_places=6)
    action_configurations: list[ActionInput] = Field(min_length=1, max_length=MAX_ACTIONS)


class BudgetInput(_Shape):
    display_name: Annotated[StorableText, Field(min_length=1, max_length=128)]
    filter: BudgetFilter = Field(default_factory=BudgetFilter)
    alert_configurations: list[AlertInput] = Field(min_length=1, max_length=MAX_ALERTS)


class CreateBudget(_Shape):
    budget: BudgetInput


class UpdateBudget(_Shape):
    budget: BudgetInput


# -- stored and shown ---------------------------------------------------------------------


class Action(_Shape):
    action_configuration_id: str
    action_type: ActionType
    target: str | None = None


class Alert(_Shape):
    alert_configuration_id: str
    time_period: TimePeriod
    trigger_type: TriggerType
    quantity_type: QuantityType
    quantity_threshold: Decimal
    action_configurations: list[Action]

    @property
    def blocks(self) -> bool:
        return any(a.action_type == ActionType.BLOCK_USAGE for a in self.action_configurations)

    def webhooks(self) -> list[Action]:
        kind = ActionType.WEBHOOK_NOTIFICATION
        return [a for a in self.action_configurations if a.action_type == kind]


class StoredBudget(_Shape):
    """What `budgets.config` holds."""

    filter: BudgetFilter
    alert_configurations: list[Alert]


class BudgetConfiguration(BaseModel):
    budget_configuration_id: str
    account_id: str
    display_name: str
    filter: BudgetFilter
    alert_configurations: list[Alert]
    create_time: int = Field(description="epoch milliseconds")
    update_time: int = Field(description="epoch milliseconds")


class BudgetAnswer(BaseModel):
    budget: BudgetConfiguration


class BudgetList(BaseModel):
    budgets: list[BudgetConfiguration]


class Empty(BaseModel):
    pass


class AlertSpendStatus(BaseModel):
    """One threshold's spend now (Databricks' shape; amounts as decimal strings)."""

    alert_configuration_id: str
    time_period: TimePeriod
    quantity_type: QuantityType
    spend: str
    threshold: str
    percent_consumed: str = Field(description="rounded down to one decimal place")
    blocking: bool
    scope_type: str = "ALERT_CONFIGURATION_SCOPE_TYPE_SHARED"


class BudgetSpendStatus(BaseModel):
    name: str = Field(description="accounts/{account_id}/budget-spend-statuses/{budget_id}")
    alert_spend_statuses: list[AlertSpendStatus]
