"""What each route of the management API does, as the audit log names it: the
`AuditAction` catalogue, and for each route whether it is recorded and which parts of a
request name its target.

Recorded: every call that changes something (POST, PUT, PATCH, DELETE) under `/api/2.0/`
— serving endpoints, permissions, workspaces and their principals, tokens, token
management, SCIM, the model registry, the Stripe webhook — every billing read (who looked
at usage, prices and invoices, as Databricks records billable-usage downloads), and every
failed authentication (401) on any of these routes. Other reads are not recorded; neither
are the query routes (`/serving-endpoints/...`: they are billed per request instead).

A target is built from identifiers only: the route's path parameters, plus the body or
answer fields named here (an endpoint's name when it is created, a token's id when it is
minted). Nothing else of a body or an answer is read: token values, environment variables
and ACLs never reach the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

API_PREFIX = "/api/2.0/"
ACCOUNT_API_PREFIX = "/api/2.1/accounts/"  # account-level routes (budgets)
CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class AuditAction(StrEnum):
    CREATE_ENDPOINT = "serving-endpoints.create"
    LIST_ENDPOINTS = "serving-endpoints.list"
    GET_ENDPOINT = "serving-endpoints.get"
    DELETE_ENDPOINT = "serving-endpoints.delete"
    UPDATE_ENDPOINT_CONFIG = "serving-endpoints.update-config"
    READ_INFERENCE_LOG = "serving-endpoints.read-inference-log"
    CREATE_PT_ENDPOINT = "serving-endpoints.create-provisioned-throughput"
    UPDATE_PT_CONFIG = "serving-endpoints.update-provisioned-throughput-config"
    PATCH_ENDPOINT_TAGS = "serving-endpoints.patch-tags"
    PUT_AI_GATEWAY = "serving-endpoints.put-ai-gateway"
    PUT_RATE_LIMITS = "serving-endpoints.put-rate-limits"
    GET_OPTIMIZATION_INFO = "serving-endpoints.get-model-optimization-info"
    GET_ENDPOINT_METRICS = "serving-endpoints.get-metrics"
    GET_ENDPOINT_OPENAPI = "serving-endpoints.get-openapi"
    GET_SERVED_MODEL_LOGS = "serving-endpoints.get-logs"
    GET_SERVED_MODEL_BUILD_LOGS = "serving-endpoints.get-build-logs"
    GET_PERMISSIONS = "permissions.get"
    SET_PERMISSIONS = "permissions.set"
    UPDATE_PERMISSIONS = "permissions.update"
    CREATE_WORKSPACE = "workspaces.create"
    LIST_WORKSPACES = "workspaces.list"
    ADD_USER = "workspaces.add-user"
    ADD_SERVICE_PRINCIPAL = "workspaces.add-service-principal"
    ADD_GROUP = "workspaces.add-group"
    CREATE_TOKEN = "tokens.create"
    LIST_TOKENS = "tokens.list"
    DELETE_TOKEN = "tokens.delete"
    LIST_MANAGED_TOKENS = "token-management.list"
    GET_MANAGED_TOKEN = "token-management.get"
    DELETE_MANAGED_TOKEN = "token-management.delete"
    CREATE_OBO_TOKEN = "token-management.create-obo-token"
    LIST_USERS = "scim.list-users"
    GET_USER = "scim.get-user"
    PATCH_USER = "scim.patch-user"
    DELETE_USER = "scim.delete-user"
    LIST_SERVICE_PRINCIPALS = "scim.list-service-principals"
    GET_SERVICE_PRINCIPAL = "scim.get-service-principal"
    PATCH_SERVICE_PRINCIPAL = "scim.patch-service-principal"
    DELETE_SERVICE_PRINCIPAL = "scim.delete-service-principal"
    REGISTER_MODEL = "models.register"
    LIST_MODELS = "models.list"
    LIST_MODEL_SOURCES = "models.list-sources"
    SHARE_MODEL_SOURCE = "models.share-source"
    READ_ENDPOINT_USAGE = "billing.read-endpoint-usage"
    READ_USAGE = "billing.read-usage"
    READ_LIST_PRICES = "billing.read-list-prices"
    LIST_INVOICES = "billing.list-invoices"
    GET_INVOICE = "billing.get-invoice"
    ESTIMATE = "billing.estimate"
    READ_SUMMARY = "billing.read-summary"
    READ_ENDPOINT_STATS = "billing.read-endpoint-stats"
    GET_INVOICE_LINE_RECORDS = "billing.get-invoice-line-records"
    GET_VIEWER = "billing.get-viewer"
    STRIPE_WEBHOOK = "billing.stripe-webhook"
    LIST_AUDIT_LOG = "audit-log.list"
    CREATE_BUDGET = "budgets.create"
    LIST_BUDGETS = "budgets.list"
    GET_BUDGET = "budgets.get"
    UPDATE_BUDGET = "budgets.update"
    DELETE_BUDGET = "budgets.delete"
    GET_BUDGET_SPEND_STATUS = "budgets.get-spend-status"


@dataclass(frozen=True)
class Audited:
    """One route's entry: its action, whether a successful read is recorded too, and the
    target fields beyond its path parameters (target key -> field, dotted for nesting)."""

    action: str  # an AuditAction; derived from the route for one not catalogued yet
    reads_recorded: bool = False
    body: Mapping[str, str] = field(default_factory=dict)
    answer: Mapping[str, str] = field(default_factory=dict)


A = AuditAction
_ENDPOINTS = "/api/2.0/serving-endpoints"
_SCIM = "/api/2.0/preview/scim/v2"
_TOKENS = "/api/2.0/token-management"
_BILLING = "/api/2.0/billing"
_BUDGETS = "/api/2.1/accounts/{account_id}"

# (method, route path without a trailing slash) -> entry.
CATALOGUE: dict[tuple[str, str], Audited] = {
    ("POST", _ENDPOINTS): Audited(A.CREATE_ENDPOINT, body={"name": "name"}),
    ("GET", _ENDPOINTS): Audited(A.LIST_ENDPOINTS),
    ("GET", f"{_ENDPOINTS}/{{name}}"): Audited(A.GET_ENDPOINT),
    ("DELETE", f"{_ENDPOINTS}/{{name}}"): Audited(A.DELETE_ENDPOINT),
    ("PUT", f"{_ENDPOINTS}/{{name}}/config"): Audited(A.UPDATE_ENDPOINT_CONFIG),
    ("POST", f"{_ENDPOINTS}/pt"): Audited(A.CREATE_PT_ENDPOINT, body={"name": "name"}),
    ("GET", f"{_ENDPOINTS}/{{name}}/inference-log"): Audited(
        A.READ_INFERENCE_LOG, reads_recorded=True
    ),
    ("PUT", f"{_ENDPOINTS}/pt/{{name}}/config"): Audited(A.UPDATE_PT_CONFIG),
    ("PATCH", f"{_ENDPOINTS}/{{name}}/tags"): Audited(A.PATCH_ENDPOINT_TAGS),
    ("PUT", f"{_ENDPOINTS}/{{name}}/ai-gateway"): Audited(A.PUT_AI_GATEWAY),
    ("PUT", f"{_ENDPOINTS}/{{name}}/rate-limits"): Audited(A.PUT_RATE_LIMITS),
    ("GET", f"{_ENDPOINTS}/get-model-optimization-info/{{model}}/{{version}}"): Audited(
        A.GET_OPTIMIZATION_INFO
    ),
    ("GET", f"{_ENDPOINTS}/{{name}}/metrics"): Audited(A.GET_ENDPOINT_METRICS),
    ("GET", f"{_ENDPOINTS}/{{name}}/openapi"): Audited(A.GET_ENDPOINT_OPENAPI),
    ("GET", f"{_ENDPOINTS}/{{name}}/served-models/{{served}}/logs"): Audited(
        A.GET_SERVED_MODEL_LOGS
    ),
    ("GET", f"{_ENDPOINTS}/{{name}}/served-models/{{served}}/build-logs"): Audited(
        A.GET_SERVED_MODEL_BUILD_LOGS
    ),
    ("GET", "/api/2.0/permissions/serving-endpoints/{endpoint_id}"): Audited(A.GET_PERMISSIONS),
    ("PUT", "/api/2.0/permissions/serving-endpoints/{endpoint_id}"): Audited(A.SET_PERMISSIONS),
    ("PATCH", "/api/2.0/permissions/serving-endpoints/{endpoint_id}"): Audited(
        A.UPDATE_PERMISSIONS
    ),
    ("POST", "/api/2.0/workspaces"): Audited(
        A.CREATE_WORKSPACE, body={"name": "name"}, answer={"workspace_id": "workspace_id"}
    ),
    ("GET", "/api/2.0/workspaces"): Audited(A.LIST_WORKSPACES),
    ("POST", "/api/2.0/workspaces/{workspace_id}/users"): Audited(
        A.ADD_USER, body={"user_name": "user_name"}, answer={"user_id": "id"}
    ),
    ("POST", "/api/2.0/workspaces/{workspace_id}/service-principals"): Audited(
        A.ADD_SERVICE_PRINCIPAL, body={"application_id": "name"}, answer={"principal_id": "id"}
    ),
    ("POST", "/api/2.0/workspaces/{workspace_id}/groups"): Audited(
        A.ADD_GROUP, body={"group_name": "group_name"}
    ),
    ("POST", "/api/2.0/token/create"): Audited(
        A.CREATE_TOKEN, answer={"token_id": "token_info.token_id"}
    ),
    ("GET", "/api/2.0/token/list"): Audited(A.LIST_TOKENS),
    ("POST", "/api/2.0/token/delete"): Audited(A.DELETE_TOKEN, body={"token_id": "token_id"}),
    ("GET", f"{_TOKENS}/tokens"): Audited(A.LIST_MANAGED_TOKENS),
    ("GET", f"{_TOKENS}/tokens/{{token_id}}"): Audited(A.GET_MANAGED_TOKEN),
    ("DELETE", f"{_TOKENS}/tokens/{{token_id}}"): Audited(A.DELETE_MANAGED_TOKEN),
    ("POST", f"{_TOKENS}/on-behalf-of/tokens"): Audited(
        A.CREATE_OBO_TOKEN,
        body={"application_id": "application_id", "user_name": "user_name"},
        answer={"token_id": "token_info.token_id"},
    ),
    ("GET", f"{_SCIM}/Users"): Audited(A.LIST_USERS),
    ("GET", f"{_SCIM}/Users/{{user_id}}"): Audited(A.GET_USER),
    ("PATCH", f"{_SCIM}/Users/{{user_id}}"): Audited(A.PATCH_USER),
    ("DELETE", f"{_SCIM}/Users/{{user_id}}"): Audited(A.DELETE_USER),
    ("GET", f"{_SCIM}/ServicePrincipals"): Audited(A.LIST_SERVICE_PRINCIPALS),
    ("GET", f"{_SCIM}/ServicePrincipals/{{principal_id}}"): Audited(A.GET_SERVICE_PRINCIPAL),
    ("PATCH", f"{_SCIM}/ServicePrincipals/{{principal_id}}"): Audited(A.PATCH_SERVICE_PRINCIPAL),
    ("DELETE", f"{_SCIM}/ServicePrincipals/{{principal_id}}"): Audited(A.DELETE_SERVICE_PRINCIPAL),
    ("POST", "/api/2.0/models"): Audited(
        A.REGISTER_MODEL, body={"name": "name", "version": "version"}
    ),
    ("GET", "/api/2.0/models"): Audited(A.LIST_MODELS),
    ("GET", "/api/2.0/models/sources"): Audited(A.LIST_MODEL_SOURCES),
    ("PATCH", "/api/2.0/models/sources"): Audited(A.SHARE_MODEL_SOURCE),
    ("GET", f"{_BILLING}/endpoint-usage"): Audited(A.READ_ENDPOINT_USAGE, reads_recorded=True),
    ("GET", f"{_BILLING}/usage"): Audited(A.READ_USAGE, reads_recorded=True),
    ("GET", f"{_BILLING}/list-prices"): Audited(A.READ_LIST_PRICES, reads_recorded=True),
    ("GET", f"{_BILLING}/invoices"): Audited(A.LIST_INVOICES, reads_recorded=True),
    ("GET", f"{_BILLING}/invoices/{{invoice_id}}"): Audited(A.GET_INVOICE, reads_recorded=True),
    ("GET", f"{_BILLING}/estimate"): Audited(A.ESTIMATE, reads_recorded=True),
    ("GET", f"{_BILLING}/summary"): Audited(A.READ_SUMMARY, reads_recorded=True),
    ("GET", f"{_BILLING}/endpoint-stats"): Audited(A.READ_ENDPOINT_STATS, reads_recorded=True),
    ("GET", f"{_BILLING}/invoices/{{invoice_id}}/lines/{{line_no}}/records"): Audited(
        A.GET_INVOICE_LINE_RECORDS, reads_recorded=True
    ),
    ("GET", f"{_BILLING}/viewer"): Audited(A.GET_VIEWER, reads_recorded=True),
    ("POST", f"{_BILLING}/stripe/webhook"): Audited(A.STRIPE_WEBHOOK),
    ("GET", "/api/2.0/audit-log"): Audited(A.LIST_AUDIT_LOG),
    ("POST", f"{_BUDGETS}/budgets"): Audited(
        A.CREATE_BUDGET,
        body={"display_name": "budget.display_name"},
        answer={"budget_configuration_id": "budget.budget_configuration_id"},
    ),
    ("GET", f"{_BUDGETS}/budgets"): Audited(A.LIST_BUDGETS, reads_recorded=True),
    ("GET", f"{_BUDGETS}/budgets/{{budget_id}}"): Audited(A.GET_BUDGET, reads_recorded=True),
    ("PUT", f"{_BUDGETS}/budgets/{{budget_id}}"): Audited(A.UPDATE_BUDGET),
    ("DELETE", f"{_BUDGETS}/budgets/{{budget_id}}"): Audited(A.DELETE_BUDGET),
    ("GET", f"{_BUDGETS}/budget-spend-statuses/{{budget_id}}"): Audited(
        A.GET_BUDGET_SPEND_STATUS, reads_recorded=True
    ),
}


def catalogued(method: str, route_path: str) -> Audited | None:
    """The entry of a matched route (a trailing-slash alias shares its route's entry)."""
    return CATALOGUE.get((method, route_path.rstrip("/")))


def entry_for(method: str, route_path: str, tags: list[str], name: str) -> Audited:
    """The catalogue's entry, or for a route added without one (tests/control_plane/
    test_audit_log.py fails until it is catalogued) an action named after the route."""
    found = catalogued(method, route_path)
    if found is not None:
        return found
    service = tags[0] if tags else "api"
    return Audited(f"{service}.{name.replace('_', '-')}")


def is_recorded(method: str, entry: Audited, status_code: int) -> bool:
    return method in CHANGING_METHODS or entry.reads_recorded or status_code == 401
