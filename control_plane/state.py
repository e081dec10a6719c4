"""What one running control plane holds (built in the app's lifespan, never at import)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing.jobs import BillingJobs
from billing.ratecard import RateCards
from control_plane.budgets.jobs import BudgetJobs
from control_plane.ids import utcnow
from control_plane.query.gateway import Gateway
from control_plane.reconciler import Reconciler
from control_plane.settings import Settings
from deploy.providers.base import Provider


@dataclass
class ControlPlane:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    provider: Provider
    reconciler: Reconciler
    rate_cards: RateCards
    billing: BillingJobs
    budgets: BudgetJobs
    generated_admin_token: str | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    gateway: Gateway | None = None  # the query path; started in the app's lifespan

    def kick_budgets(self) -> None:
        """Read budgets again now (after a change), so the gateway admits by the new ones."""
        self.budgets.refresh(utcnow())

    def check_capacity(self, worker: Any) -> None:
        self.provider.check_supported(worker)

    def chunk_size(self, family: str, name: str, version: str) -> int:
        """Tokens/s one provisioned-throughput chunk buys, from the rate card in force now
        (`billing/ratecards/`: derived per model from a replica's measured throughput)."""
        return self.rate_cards.at(utcnow()).throughput(family, name, version).chunk_size
