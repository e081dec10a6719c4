"""Ray Serve hosting of the engine: `config.WorkerAppConfig` (typed, validated, pure: the
control plane builds it without Ray or torch), the `server.LLMServer` replica class (one
engine per replica, streaming `generate`, unary `complete` and `embed`, `stats`,
`check_health`, graceful drain; any `server.ServingEngine` may be injected), and the pure
builder `app.build_app(config) -> ray.serve.Application`. A replica may span several devices
(`shards`), sharded by `workers.parallel`.

Nothing is re-exported here, so importing `workers.serve.config` never loads Ray or torch.
"""
