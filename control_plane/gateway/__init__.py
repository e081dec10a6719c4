"""The query gateway: the OpenAI-compatible and native query routes (`router`), request
bodies (`protocol`) and response shapes (`shapes`, `sse`), who may query what (`targets`),
the traffic split and fallback order (`routing`, `answers`), calls to Ray Serve replicas
with bounded queues and timeouts (`dispatch`), AI-gateway rate limits (`ratelimit`, in
process or in Redis), one usage row per accepted query (`accounting`, over
`billing.ledger`), Prometheus metrics (`metrics`), and what one process holds (`runtime`)."""
