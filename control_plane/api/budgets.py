"""The budgets API, in the shape of Databricks' account budgets
(`/api/2.1/accounts/{account_id}/budgets`, what `AccountClient.budgets` calls), account
admins only; another account's id, or a budget of another account, is a 404. Plus the spend
status of a budget's thresholds (`/budget-spend-statuses/{budget_id}`)."""

from __future__ import annotations

import uuid
from decimal import ROUND_DOWN, Decimal

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.auth import Caller
from control_plane.budgets.config import (
    Action,
    ActionType,
    Alert,
    AlertSpendStatus,
    BudgetAnswer,
    BudgetConfiguration,
    BudgetInput,
    BudgetList,
    BudgetSpendStatus,
    CreateBudget,
    Empty,
    StoredBudget,
    UpdateBudget,
)
from control_plane.budgets.webhooks import TargetRefused, check_target
from control_plane.db.models import Budget
from control_plane.errors import InvalidParameter, NotFound, PermissionDenied
from control_plane.ids import to_millis, utcnow
from control_plane.state import ControlPlane
from control_plane.text import UNSTORABLE

router = APIRouter(prefix="/api/2.1/accounts/{account_id}", tags=["budgets"])


def _account(caller: Caller, account_id: str) -> None:
    if account_id != caller.account_id:
        raise NotFound(f"account {account_id!r} does not exist")
    if not caller.is_account_admin:
        raise PermissionDenied("only account admins manage budgets")


def _budget(session: Session, caller: Caller, budget_id: str) -> Budget:
    # A budget id is a UUID: anything longer, or text no database stores, names none.
    storable = len(budget_id) <= 36 and not UNSTORABLE.search(budget_id)
    budget = session.get(Budget, budget_id) if storable else None
    if budget is None or budget.account_id != caller.account_id:
        raise NotFound(f"budget {budget_id!r} does not exist")
    return budget


def _stored(body: BudgetInput, plane: ControlPlane, before: StoredBudget | None) -> StoredBudget:
    """The budget as stored: ids kept where the caller gave known ones, new ones otherwise;
    actions checked (webhooks need a signing secret and a public https target)."""
    old = before.alert_configurations if before else []
    known = {a.alert_configuration_id for a in old}
    known |= {x.action_configuration_id for a in old for x in a.action_configurations}

    def kept(given: str | None) -> str:
        return given if given is not None and given in known else str(uuid.uuid4())

    alerts = []
    for alert in body.alert_configurations:
        actions = []
        for action in alert.action_configurations:
            _check_action(action.action_type, action.target, plane)
            webhook = action.action_type == ActionType.WEBHOOK_NOTIFICATION
            actions.append(
                Action(
                    action_configuration_id=kept(action.action_configuration_id),
                    action_type=action.action_type,
                    target=action.target if webhook else None,
                )
            )
        alerts.append(
            Alert(
                alert_configuration_id=kept(alert.alert_configuration_id),
                time_period=alert.time_period,
                trigger_type=alert.trigger_type,
                quantity_type=alert.quantity_type,
                quantity_threshold=alert.quantity_threshold,
                action_configurations=actions,
            )
        )
    return StoredBudget(filter=body.filter, alert_configurations=alerts)


def _check_action(kind: ActionType, target: str | None, plane: ControlPlane) -> None:
    settings = plane.settings.budgets
    if kind == ActionType.EMAIL_NOTIFICATION:
        raise InvalidParameter(
            "EMAIL_NOTIFICATION is not available: moeserve sends no mail. Use "
            "WEBHOOK_NOTIFICATION with an https target (a signed POST), or BLOCK_USAGE"
        )
    if kind != ActionType.WEBHOOK_NOTIFICATION:
        return
    if settings.webhook_signing_secret is None:
        raise InvalidParameter(
            "WEBHOOK_NOTIFICATION needs budgets.webhook_signing_secret configured by the "
            "operator (every webhook is signed)"
        )
    if not target:
        raise InvalidParameter("WEBHOOK_NOTIFICATION needs a target: the URL to POST to")
    try:
        check_target(target, settings)
    except TargetRefused as exc:
        raise InvalidParameter(str(exc)) from None


def _shown(budget: Budget) -> BudgetConfiguration:
    return BudgetConfiguration(
        budget_configuration_id=budget.id,
        account_id=budget.account_id,
        display_name=budget.display_name,
        filter=budget.config.filter,
        alert_configurations=budget.config.alert_configurations,
        create_time=to_millis(budget.created_at) or 0,
        update_time=to_millis(budget.updated_at) or 0,
    )


@router.post("/budgets", response_model=BudgetAnswer)
def create_budget(
    account_id: str, body: CreateBudget, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> BudgetAnswer:
    _account(caller, account_id)
    now = utcnow()
    budget = Budget(
        id=str(uuid.uuid4()),
        account_id=caller.account_id,
        display_name=body.budget.display_name,
        config=_stored(body.budget, plane, None),
        created_at=now,
        updated_at=now,
    )
    session.add(budget)
    session.commit()
    plane.kick_budgets()  # in force before the answer: no query slips in before the next pass
    return BudgetAnswer(budget=_shown(budget))


@router.get("/budgets", response_model=BudgetList)
def list_budgets(account_id: str, session: SessionDep, caller: CallerDep) -> BudgetList:
    _account(caller, account_id)
    rows = session.scalars(
        select(Budget).where(Budget.account_id == caller.account_id).order_by(Budget.created_at)
    )
    return BudgetList(budgets=[_shown(b) for b in rows])


@router.get("/budgets/{budget_id}", response_model=BudgetAnswer)
def get_budget(
    account_id: str, budget_id: str, session: SessionDep, caller: CallerDep
) -> BudgetAnswer:
    _account(caller, account_id)
    return BudgetAnswer(budget=_shown(_budget(session, caller, budget_id)))


@router.put("/budgets/{budget_id}", response_model=BudgetAnswer)
def update_budget(
    account_id: str,
    budget_id: str,
    body: UpdateBudget,
    session: SessionDep,
    caller: CallerDep,
    plane: PlaneDep,
) -> BudgetAnswer:
    """Replace the budget's name, filter and thresholds (ids given back keep their alerts'
    and actions' identity); the gateway applies it from the next budgets pass."""
    _account(caller, account_id)
    budget = _budget(session, caller, budget_id)
    budget.display_name = body.budget.display_name
    budget.config = _stored(body.budget, plane, budget.config)
    budget.updated_at = utcnow()
    session.commit()
    plane.kick_budgets()
    return BudgetAnswer(budget=_shown(budget))


@router.delete("/budgets/{budget_id}", response_model=Empty)
def delete_budget(
    account_id: str, budget_id: str, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> Empty:
    _account(caller, account_id)
    session.delete(_budget(session, caller, budget_id))
    session.commit()
    plane.kick_budgets()
    return Empty()


@router.get("/budget-spend-statuses/{budget_id}", response_model=BudgetSpendStatus)
def budget_spend_status(
    account_id: str, budget_id: str, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> BudgetSpendStatus:
    """Each threshold's spend as the last budgets pass read it, with what the queries in
    flight may still cost (the figure the gateway admits against)."""
    _account(caller, account_id)
    budget = _budget(session, caller, budget_id)
    statuses = []
    for alert in budget.config.alert_configurations:
        spent = plane.budgets.guard.used(alert.alert_configuration_id)
        threshold = alert.quantity_threshold
        percent = Decimal(100) if threshold == 0 else spent * 100 / threshold
        statuses.append(
            AlertSpendStatus(
                alert_configuration_id=alert.alert_configuration_id,
                time_period=alert.time_period,
                quantity_type=alert.quantity_type,
                spend=str(spent),
                threshold=str(threshold),
                percent_consumed=str(percent.quantize(Decimal("0.1"), rounding=ROUND_DOWN)),
                blocking=alert.blocks,
            )
        )
    return BudgetSpendStatus(
        name=f"accounts/{account_id}/budget-spend-statuses/{budget.id}",
        alert_spend_statuses=statuses,
    )
