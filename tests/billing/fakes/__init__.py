"""Small honest fakes of external services for billing tests (Stripe's meter-event routes, a
fault-injecting front for localstripe, and a 127.0.0.1-only localstripe launcher)."""
