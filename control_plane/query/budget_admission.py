"""Blocking budgets on the query path: before a query is dispatched, its largest possible
cost is reserved under every blocking threshold whose budget counts it, or the query is
refused with a 429 naming the budget (`control_plane.budgets.guard`); once its usage row is
committed, its actual cost replaces the reservation (`Accounting`)."""

from __future__ import annotations

from control_plane.budgets.guard import BudgetExceeded, BudgetGuard, Hold
from control_plane.endpoints.config import ServedEntity
from control_plane.errors import RequestLimitExceeded
from control_plane.query.requests import (
    EmbeddingsRequest,
    GenerationBody,
    PromptIds,
    QueryRequest,
    context_of,
)
from control_plane.query.targets import QueryTarget


async def hold_budget(
    guard: BudgetGuard,
    target: QueryTarget,
    request_id: str,
    body: QueryRequest,
    prompt: PromptIds,
    candidates: list[ServedEntity],
) -> Hold | None:
    """Reserve the query under the blocking budgets that count it (None: none do)."""
    caller = target.caller
    limits = guard.limits_for(
        caller.account_id, caller.workspace_id, target.endpoint_id, target.endpoint_name
    )
    if not limits:
        return None
    costs = []
    for entity in candidates:  # the traffic split may fall back: the dearest counts
        prompt_tokens = sum(map(len, await prompt.tokenized(entity)))
        output = (
            0 if isinstance(body, EmbeddingsRequest) else _most_output(body, entity, prompt_tokens)
        )
        costs.append(guard.query_cost(entity, caller.workspace_id, prompt_tokens, output))
    try:
        return guard.admit(request_id, limits, lambda unit: max(cost(unit) for cost in costs))
    except BudgetExceeded as exc:
        raise RequestLimitExceeded(str(exc)) from None


def _most_output(body: GenerationBody, entity: ServedEntity, prompt_tokens: int) -> int:
    """The most tokens the query may generate: `max_tokens` per choice, or without one the
    rest of the model's context."""
    limit = body.token_limit()
    if limit is None:
        limit = max((context_of(entity) or 0) - prompt_tokens, 0)
    return limit * body.n
