"""Budgets: spend limits over an account's usage, in the shape of Databricks' account budgets
(`/api/2.1/accounts/{account_id}/budgets`), each with alert thresholds whose actions either
notify (a signed webhook POST, delivered through an outbox, and an audit-log entry) or block
(the gateway refuses new queries in scope with a 429 until the period rolls over or the
threshold is raised). `config` holds the shapes, `spend` the month- or day-to-date spend of
a budget (the billing API's records, one formula), `guard` the gateway's exact admission,
`alerts` the crossings and their webhooks."""
