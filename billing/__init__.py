"""Billing: the request-level usage ledger (`ledger`: the `endpoint_usage` and
`inference_log` tables and their group-commit writer), the column types every table shares
(`sqltypes`); DBU pricing over versioned rate cards, provisioned-throughput metering,
invoices and the Stripe gateway come next. Never imports `control_plane`.
"""
