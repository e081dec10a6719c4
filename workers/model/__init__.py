"""The MoE transformer (DBRX and Mixtral families) and its checkpoints.

Pure descriptions, importable without torch: `args.ModelArgs` (a model's shapes),
`presets` (named configurations), `hf_config` (a checkpoint's config.json <-> `ModelArgs`),
`source.ModelSource` (what a replica serves). The forward pass reads in three files:
`transformer.MoETransformer` (input ids [B, T] -> logits [B, T, vocab]), `layers` (norms,
RoPE, attention and where its keys and values live) and `moe` (router and experts). Around
it: `kernels` (faster matmuls swapped in at load: oneDNN-packed CPU weights, grouped expert
matmuls on CUDA), `loading` (`load_model(source)`, `build_random`, `from_preset`) and
`checkpoint` (load, save and verify Hugging Face checkpoint directories, via `hf_format`).

Nothing is re-exported here: importing the package must stay free of torch, because the
control plane reads the pure modules above without it.
"""
