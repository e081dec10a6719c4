"""The query gateway: OpenAI-compatible and native invocation routes (`router`), the
request/response protocol (`protocol`) and the traffic split (`routing`)."""
