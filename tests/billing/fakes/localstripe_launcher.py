"""Run localstripe's aiohttp `app` on 127.0.0.1 only (its own `start()` binds every
interface) and without its pickle file in /tmp (shared by every localstripe on the machine).

One gap is filled: localstripe's `POST /v1/invoices` only invoices subscriptions (404 "No
upcoming invoices for customer" otherwise), while Stripe creates a one-off invoice from the
customer's pending invoice items with `pending_invoice_items_behavior=include`; that case is
routed to localstripe's own `Invoice(...)` constructor, which takes the pending items.

    python -m tests.billing.fakes.localstripe_launcher PORT
"""

from __future__ import annotations

import sys
from typing import Any

from aiohttp import web
from localstripe import resources, server  # type: ignore[import-untyped]


def _create_invoice(original: Any) -> Any:
    def create(**data: Any) -> Any:
        if (
            data.get("subscription") is None
            and data.get("pending_invoice_items_behavior") == "include"
        ):
            return resources.Invoice(
                customer=data.get("customer"),
                description=data.get("description"),
                metadata=data.get("metadata"),
            )
        return original(**data)

    return create


def main() -> None:
    port = int(sys.argv[1])
    resources.store.dump_to_disk = lambda: None  # keep state in memory only
    resources.Invoice._api_create = _create_invoice(resources.Invoice._api_create)
    web.run_app(server.app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
