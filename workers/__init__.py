"""GPU/CPU workers: the MoE transformer (DBRX, Mixtral) and its checkpoints (`model`), the
cl100k tokenizer (`tokenizer`), the inference engine (`engine`), sharding of one replica over
several devices (`parallel`), the Ray Serve deployments that host it (`serve`), and a
model-free engine for serving-path tests (`testing`).

`workers` imports none of moeserve's other packages (enforced by import-linter), so a
worker image needs only this package and its runtime dependencies.
"""
