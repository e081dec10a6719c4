"""The billing API (`/api/2.0/billing/...`): usage records, request-level usage, list
prices, invoices, cost estimates and the Stripe webhook, workspace-scoped (account admins see
every workspace), as JSON or CSV. The billing logic itself lives in `billing/`."""
