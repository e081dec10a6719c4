"""Billing: the usage ledger, DBU pricing (pure functions over versioned rate cards),
provisioned-throughput metering, invoices and the Stripe gateway. Never imports
`control_plane`. Built by later issues; this package is its home.
"""
