"""Budgets: the real `databricks-sdk` AccountClient manages them; a blocking threshold
stops traffic within its limit under 32 concurrent clients (the gateway reserves each
query's largest cost) and lets it through again when raised; an alerting threshold fires
its signed webhook exactly once per crossing, through retries, with an audit entry. The
replicas run the instant engine on the session's Ray."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from decimal import ROUND_UP, Decimal
from typing import Any

import httpx
import pytest
from databricks.sdk import AccountClient
from databricks.sdk.errors import InvalidParameterValue, NotFound
from databricks.sdk.service import billing as sdk
from sqlalchemy import select

from control_plane.db.models import AuditRecord
from tests.control_plane.budget_support import webhook_receiver
from tests.control_plane.conftest import ADMIN_TOKEN, LiveServer, wait_for
from tests.control_plane.query_fixtures import create_endpoint, instant_ray_server

SECRET = "whsec_budget_test"
CHAT = {"messages": [{"role": "user", "content": "What is a budget?"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    budgets = {
        "refresh_interval_s": 0.2,
        "webhook_signing_secret": SECRET,
        "webhook_private_targets": True,  # the receiver listens on 127.0.0.1
    }
    with instant_ray_server(tmp_path_factory.mktemp("budgets"), budgets=budgets) as live:
        with live.client() as http:
            create_endpoint(http, "capped")
            create_endpoint(http, "watched")
        yield live


def _account(server: LiveServer) -> str:
    with server.client() as http:
        return str(http.get("/api/2.0/workspaces").json()["workspaces"][0]["account_id"])


def _budget(
    endpoint: str, threshold: str, action: dict[str, Any], unit: str = "DBU"
) -> dict[str, Any]:
    return {
        "budget": {
            "display_name": f"cap {endpoint}",
            "filter": {"endpoint_name": {"operator": "IN", "values": [endpoint]}},
            "alert_configurations": [
                {
                    "time_period": "MONTH",
                    "trigger_type": "CUMULATIVE_SPENDING_EXCEEDED",
                    "quantity_type": unit,
                    "quantity_threshold": threshold,
                    "action_configurations": [action],
                }
            ],
        }
    }


def _spent(server: LiveServer, endpoint: str) -> Decimal:
    """DBUs the billing API shows for `endpoint` (stored and live records)."""
    with server.client() as http:
        records = http.get("/api/2.0/billing/usage", params={"endpoint_name": endpoint}).json()
    return sum((Decimal(r["usage_quantity"]) for r in records["records"]), Decimal(0))


def test_the_sdk_manages_budgets_and_bad_ones_are_refused(server: LiveServer) -> None:
    account = _account(server)
    client = AccountClient(host=server.url, account_id=account, token=ADMIN_TOKEN)
    created = client.budgets.create(
        budget=sdk.CreateBudgetConfigurationBudget(
            display_name="team search",
            filter=sdk.BudgetConfigurationFilter(
                tags=[
                    sdk.BudgetConfigurationFilterTagClause(
                        key="team",
                        value=sdk.BudgetConfigurationFilterClause(
                            operator=sdk.BudgetConfigurationFilterOperator.IN, values=["search"]
                        ),
                    )
                ]
            ),
            alert_configurations=[
                sdk.CreateBudgetConfigurationBudgetAlertConfigurations(
                    time_period=sdk.AlertConfigurationTimePeriod.MONTH,
                    trigger_type=sdk.AlertConfigurationTriggerType.CUMULATIVE_SPENDING_EXCEEDED,
                    quantity_type=sdk.AlertConfigurationQuantityType.LIST_PRICE_DOLLARS_USD,
                    quantity_threshold="250.50",
                    action_configurations=[
                        sdk.CreateBudgetConfigurationBudgetActionConfigurations(
                            action_type=sdk.ActionConfigurationType.BLOCK_USAGE
                        )
                    ],
                )
            ],
        )
    ).budget
    assert created is not None and created.budget_configuration_id
    [alert] = created.alert_configurations or []
    assert alert.quantity_threshold == "250.50" and alert.alert_configuration_id
    got = client.budgets.get(created.budget_configuration_id).budget
    assert got is not None and got.display_name == "team search"
    assert [b.budget_configuration_id for b in client.budgets.list()] == [
        created.budget_configuration_id
    ]
    alert.quantity_threshold = "300"
    updated = client.budgets.update(
        created.budget_configuration_id,
        sdk.UpdateBudgetConfigurationBudget(
            display_name="team search (raised)", filter=got.filter, alert_configurations=[alert]
        ),
    ).budget
    assert updated is not None and updated.alert_configurations is not None
    assert updated.alert_configurations[0].alert_configuration_id == alert.alert_configuration_id
    assert updated.alert_configurations[0].quantity_threshold == "300"

    email = _budget("x", "1", {"action_type": "EMAIL_NOTIFICATION", "target": "a@b.c"})
    with server.client() as http:
        refused = http.post(f"/api/2.1/accounts/{account}/budgets", json=email)
        assert refused.status_code == 400 and "sends no mail" in refused.json()["message"]
        other = http.post("/api/2.1/accounts/not-mine/budgets", json=email)
        assert other.status_code == 404
        nul = _budget("x", "1", {"action_type": "BLOCK_USAGE"})
        nul["budget"]["display_name"] = "bad\x00name"
        assert http.post(f"/api/2.1/accounts/{account}/budgets", json=nul).status_code == 400
    client.budgets.delete(created.budget_configuration_id)
    with pytest.raises(NotFound):
        client.budgets.get(created.budget_configuration_id)
    with pytest.raises((InvalidParameterValue, NotFound)):
        client.budgets.get("0" * 200)
    with server.client() as http:  # NUL in the path: a 404, not a database error
        assert http.get(f"/api/2.1/accounts/{account}/budgets/a%00b").status_code == 404


def test_a_blocking_budget_stops_32_concurrent_clients_within_its_limit_then_lets_through(
    server: LiveServer,
) -> None:
    account = _account(server)
    limit = Decimal("0.004")  # DBU: a few dozen small queries of dbrx-tiny
    with server.client() as http:
        created = http.post(
            f"/api/2.1/accounts/{account}/budgets",
            json=_budget("capped", str(limit), {"action_type": "BLOCK_USAGE"}),
        ).json()["budget"]
    budget_id = created["budget_configuration_id"]
    statuses: list[int] = []
    messages: set[str] = set()
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        ) as http:
            for _ in range(40):
                answer = http.post("/serving-endpoints/capped/invocations", json=CHAT)
                with lock:
                    statuses.append(answer.status_code)
                    if answer.status_code == 429:
                        messages.add(answer.json()["message"])
                if answer.status_code == 429:
                    return

    threads = [threading.Thread(target=client_loop) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    admitted, refused = statuses.count(200), statuses.count(429)
    assert admitted > 0 and refused == 32, (admitted, refused, set(statuses))
    assert all("cap capped" in m and budget_id in m for m in messages)
    spent = _spent(server, "capped")
    print(f"blocking budget: {admitted} admitted, {refused} refused, {spent} of {limit} DBU")
    assert 0 < spent <= limit, f"{spent} DBU spent past a {limit} DBU limit ({admitted} queries)"

    # Raised: traffic flows again at once (the update is applied before it is answered).
    with server.client() as http:
        raised = _budget("capped", str(limit * 100), {"action_type": "BLOCK_USAGE"})
        raised["budget"]["alert_configurations"][0]["alert_configuration_id"] = created[
            "alert_configurations"
        ][0]["alert_configuration_id"]
        assert (
            http.put(f"/api/2.1/accounts/{account}/budgets/{budget_id}", json=raised).status_code
            == 200
        )
        assert http.post("/serving-endpoints/capped/invocations", json=CHAT).status_code == 200
        status = http.get(f"/api/2.1/accounts/{account}/budget-spend-statuses/{budget_id}").json()
        [alert] = status["alert_spend_statuses"]
        assert alert["blocking"] and Decimal(alert["spend"]) > 0
        assert Decimal(alert["percent_consumed"]) < 100
        http.delete(f"/api/2.1/accounts/{account}/budgets/{budget_id}")


def test_an_alerting_budget_fires_its_signed_webhook_once_per_crossing(server: LiveServer) -> None:
    account = _account(server)
    with webhook_receiver() as receiver:
        receiver.fail_first = 1  # the first attempt fails: delivered on the retry, once
        hook = {"action_type": "WEBHOOK_NOTIFICATION", "target": receiver.url}
        body = _budget("watched", "0.000001", hook, unit="LIST_PRICE_DOLLARS_USD")
        with server.client() as http:
            created = http.post(f"/api/2.1/accounts/{account}/budgets", json=body)
            assert created.status_code == 200, created.text
            budget_id = created.json()["budget"]["budget_configuration_id"]
            for _ in range(3):
                assert (
                    http.post("/serving-endpoints/watched/invocations", json=CHAT).status_code
                    == 200
                )
        wait_for(lambda: len(receiver.accepted()) == 1, 30, "the webhook to be delivered")
        _quiet(server)
        assert len(receiver.received) == 2 and len(receiver.accepted()) == 1  # one retry
        [delivered] = receiver.accepted()
        _check_signature(delivered.body, delivered.headers)
        event = json.loads(delivered.body)
        assert (event["budget_configuration_id"], event["quantity_threshold"]) == (
            budget_id,
            "0.000001",
        )
        assert Decimal(event["spend"]) >= Decimal("0.000001")

        # More queries, same period: no second webhook. A raised threshold crossed: one more.
        with server.client() as http:
            assert http.post("/serving-endpoints/watched/invocations", json=CHAT).status_code == 200
            _quiet(server)
            assert len(receiver.accepted()) == 1
            spent = Decimal(event["spend"])
            raised = (spent * 2).quantize(Decimal("0.000001"), rounding=ROUND_UP)
            body["budget"]["alert_configurations"][0]["quantity_threshold"] = str(raised)
            put = http.put(f"/api/2.1/accounts/{account}/budgets/{budget_id}", json=body)
            assert put.status_code == 200, put.text
            for _ in range(4):
                http.post("/serving-endpoints/watched/invocations", json=CHAT)
        wait_for(lambda: len(receiver.accepted()) == 2, 30, "the second crossing's webhook")
        _quiet(server)
        assert len(receiver.accepted()) == 2
    with server.plane.sessions() as session:
        crossed = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "budgets.threshold-crossed")
        ).all()
    assert [r.target["budget_configuration_id"] for r in crossed] == [budget_id, budget_id]


def _quiet(server: LiveServer) -> None:
    """Let several budget passes run (deliveries and crossings would show by then)."""
    passes = server.plane.budgets.passes
    wait_for(lambda: server.plane.budgets.passes >= passes + 5, 30, "five budget passes")


def _check_signature(body: str, headers: dict[str, str]) -> None:
    fields = dict(part.split("=", 1) for part in headers["X-Moeserve-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{fields['t']}.{body}".encode(), hashlib.sha256)
    assert hmac.compare_digest(fields["v1"], expected.hexdigest())
