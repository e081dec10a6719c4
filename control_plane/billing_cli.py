"""`moeserve billing run` (meter usage into hourly records now; idempotent; with Stripe on,
deliver what is owed) and `moeserve billing close --period YYYY-MM` (one invoice per
workspace; with Stripe in invoice mode, queue and deliver them). Both read the same settings
as `moeserve run` (`MOESERVE_...`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from billing.invoicing import InvalidPeriodError, PeriodNotEndedError
from billing.ratecard import load_rate_cards
from control_plane.settings import Settings


def add_billing_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    billing = commands.add_parser("billing", help="metering and invoices")
    jobs = billing.add_subparsers(dest="billing_command", required=True)
    for name, text in (
        ("run", "meter usage rows and capacity into hourly usage records (safe to rerun)"),
        ("close", "close a month: one invoice per workspace"),
    ):
        job = jobs.add_parser(name, help=text)
        job.add_argument("--db", help="database URL (default: SQLite in the data dir)")
        job.add_argument("--data-dir", type=Path, help="where the SQLite file lives")
        if name == "close":
            job.add_argument("--period", required=True, help="the month, YYYY-MM (UTC)")


def run_billing(args: argparse.Namespace, settings: Settings) -> int:
    from billing.jobs import BillingJobs
    from control_plane.db import build_engine, upgrade
    from control_plane.ids import utcnow

    engine = build_engine(settings.resolved_database_url())
    upgrade(engine)
    rate_cards = load_rate_cards(settings.billing.rate_card_dir)
    jobs = BillingJobs(engine, settings.billing, settings.cloud, rate_cards)
    try:
        if args.billing_command == "run":
            report = jobs.meter(utcnow())
            window = f"{report.window_start:%Y-%m-%d %H:00} .. {report.window_end:%Y-%m-%d %H:00}"
            print(
                f"metered {window} UTC: {report.originals} original, "
                f"{report.retractions} retraction, {report.restatements} restatement records"
            )
            gateway = jobs.stripe()
            if gateway is not None:  # what metering queued (meter events), and anything owed
                print(f"stripe: {jobs.deliver(utcnow(), gateway)}")
            return 0
        try:
            invoices = jobs.close_month(args.period, utcnow())
        except (InvalidPeriodError, PeriodNotEndedError) as exc:
            print(f"moeserve billing close: {exc}")
            return 2
        for invoice in invoices:
            print(
                f"{invoice.invoice_id}: workspace {invoice.workspace_id}, {len(invoice.lines)} "
                f"lines, total {invoice.total} {invoice.currency.upper()} ({invoice.status})"
            )
        if not invoices:
            print(f"no usage in {args.period}: no invoices")
        gateway = jobs.stripe()
        if gateway is not None and settings.billing.stripe_delivery == "invoices":
            print(f"stripe: {jobs.deliver(utcnow(), gateway)}")
        return 0
    finally:
        engine.dispose()
