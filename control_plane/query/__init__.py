"""The query path: the OpenAI-compatible and native query routes. Read `routes.answer` top
to bottom for one query: authenticate and resolve the target (`targets`: token, endpoint,
CAN_QUERY, rate-limit rules; cached briefly), parse the body against the endpoint's task
(`requests`), rate limit (`ratelimit`), tokenize (`prompts`), pick served entities
(`traffic`: the traffic split and fallback order) and call their Ray Serve replicas
(`replicas`: bounded queues, timeouts, fallback), shape the answer (`responses`; streams:
`streaming`), and account for it (`accounting`: exactly one usage row, over
`billing.ledger`). `gateway` is what one process holds for all of it; `metrics` its
Prometheus series; `openapi` an endpoint's query OpenAPI, generated from the models."""
