"""Run localstripe's aiohttp `app` on 127.0.0.1 only (its own `start()` binds every
interface), its state in memory, or with `--store PATH` in a pickle file of the caller's
(localstripe's own is /tmp/localstripe.pickle, shared by every localstripe on the machine).

    python -m tests.billing.fakes.localstripe_launcher PORT [--store PATH]

With `--store`, state survives a stop: localstripe writes its whole store after every
change, before it answers (its save middleware), so whatever a client was told exists is on
disk; this launcher writes it to a temporary file and renames it over PATH, so that a
process killed mid-write (SIGKILL) leaves the previous state, never a torn file. A launcher
started on an existing PATH loads it: a restarted "Stripe" still has every customer,
invoice item and invoice (and meter event) it had accepted.

Two gaps are filled:
- localstripe's `POST /v1/invoices` only invoices subscriptions (404 "No upcoming invoices
  for customer" otherwise), while Stripe creates a one-off invoice from the customer's
  pending invoice items with `pending_invoice_items_behavior=include`; that case is routed
  to localstripe's own `Invoice(...)` constructor, which takes the pending items.
- localstripe has no billing meters: `POST /v1/billing/meter_events` is answered here as
  Stripe answers it (an `identifier` already accepted is refused with 400 "An event already
  exists with identifier …" and not recorded again), the events kept in localstripe's store
  (persisted with it). `GET /_config/meter_events` lists them, each with how many times it
  was posted (duplicates included), for tests.
"""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Any

from aiohttp import web
from localstripe import resources, server  # type: ignore[import-untyped]
from localstripe.errors import UserError  # type: ignore[import-untyped]

METER_EVENT = "moeserve_fake_meter_event:"  # store keys; no localstripe object is named so


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


def _persist_in(path: Path | None) -> None:
    store = resources.store
    if path is None:
        store.dump_to_disk = lambda: None  # keep state in memory only
        return

    def dump_to_disk() -> None:
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(partial, "wb") as file:
            pickle.dump(dict(store), file, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, path)

    store.dump_to_disk = dump_to_disk
    if path.exists():
        with open(path, "rb") as file:
            dict.update(store, pickle.load(file))  # not store.update: no dump per key


async def _meter_event(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    identifier = data.get("identifier")
    payload = data.get("payload") or {}
    if not identifier or "stripe_customer_id" not in payload or "value" not in payload:
        raise UserError(400, "identifier, payload[stripe_customer_id] and payload[value] needed")
    key = METER_EVENT + identifier
    known = resources.store.get(key)
    if known is not None:
        resources.store[key] = {**known, "posts": known["posts"] + 1}
        raise UserError(400, f"An event already exists with identifier {identifier}.")
    resources.store[key] = {
        "identifier": identifier,
        "event_name": data.get("event_name"),
        "customer_id": payload["stripe_customer_id"],
        "value": payload["value"],
        "timestamp": int(data.get("timestamp") or 0),
        "posts": 1,
    }
    body = {"object": "billing.meter_event", "identifier": identifier, "livemode": False}
    return web.json_response(body)


async def _meter_events(request: web.Request) -> web.Response:
    events = {
        key.removeprefix(METER_EVENT): value
        for key, value in resources.store.items()
        if key.startswith(METER_EVENT)
    }
    return web.json_response(events)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--store", type=Path, help="persist state in this pickle file")
    args = parser.parse_args()
    _persist_in(args.store)
    resources.Invoice._api_create = _create_invoice(resources.Invoice._api_create)
    server.app.router.add_post("/v1/billing/meter_events", _meter_event)
    server.app.router.add_get("/_config/meter_events", _meter_events)
    web.run_app(server.app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
