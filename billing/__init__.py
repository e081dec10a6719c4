"""Billing: the request-level usage ledger (`ledger`: `endpoint_usage` and `inference_log`
and their group-commit writer), the capacity timeline (`capacity`) and endpoint tags
(`tags`) the control plane writes, versioned rate cards (`ratecard`) and pure Decimal
pricing (`pricing`, `estimate`), hourly metering into `system.billing.usage`-shaped records
(`metering`, `records`), invoices (`invoicing`), Stripe delivery through an outbox
(`stripe_gateway`), and the jobs that run them (`jobs`, configured by `settings`). Never
imports `control_plane`; its tables share `persistence.columns` with the control plane's.
"""
