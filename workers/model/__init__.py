"""The MoE transformer (DBRX and Mixtral families) and its checkpoints.

Pure descriptions, importable without torch: `args.ModelArgs` (a model's shapes),
`presets` (named configurations), `hf_config` (a checkpoint's config.json <-> `ModelArgs`),
`source.ModelSource` (what a replica serves). With torch: `transformer.MoETransformer` (called
with input ids [B, T], returns logits [B, T, vocab]; `layers` and `moe` hold its parts),
`loading` (`load_model(source)`, `build_random`, `from_preset`), `checkpoint` (load, save and
verify Hugging Face checkpoint directories), `kv_cache` and `attention_context` (where keys
and values live), `packed` (oneDNN-packed CPU weights).

Nothing is re-exported here: importing the package must stay free of torch, because the
control plane reads the pure modules above without it.
"""
