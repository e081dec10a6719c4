"""The inference engine: continuous batching over a paged KV cache, with streaming.

`config.EngineConfig` (pure) sizes an engine. Bookkeeping (`sequence`, `block_manager`,
`scheduler`) is plain Python; `paged_attention` and `model_runner` hold the tensors;
`engine.LLMEngine` runs one step at a time and `async_engine.AsyncEngine` streams
`request.TokenChunk`s for many concurrent `generate(request)` calls. `builder.build_engine`
makes a ready engine for a model on one device. `request.aggregate` folds a stream into one
`Completion`; `embedding` pools hidden states.

Nothing is re-exported here, so `workers.engine.config` and `workers.engine.request` import
without torch. The engine never imports the serving layer (`workers.serve`).
"""
