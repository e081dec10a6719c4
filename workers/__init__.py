"""GPU/CPU workers: the MoE transformer (DBRX, Mixtral), checkpoint loading, the cl100k
tokenizer, and — in later layers — the inference engine and Ray Serve deployments.

`workers` imports none of moeserve's other packages (enforced by import-linter), so a
worker image needs only this package and its runtime dependencies.
"""
