"""Models: loading causal LMs, LoRA, the ``tiny`` model, batching for SFT and SQL generation.

Nothing here imports torch at package import time. The public API, by module:

- :mod:`.config`: ``ModelConfig`` (``RunConfig.model``), ``LoRAConfig``, ``TinyModelConfig``.
- :mod:`.loading`: ``load_policy_from_step(ctx, step) -> (model, tokenizer)`` (what predict, rm_data,
  rm and ppo call), the lineage file ``model_ref.json`` (``ModelRef``, ``read_model_ref``,
  ``write_model_ref``, ``ModelRef.with_adapter`` / ``full_model`` for a step that publishes a new
  policy), ``load_from_ref``, ``load_causal_lm``, ``load_tokenizer``, ``resolve_base_dir``.
- :mod:`.lora`: ``apply_lora``, ``load_adapters``, ``merge_lora``, ``require_4bit_support``.
- :mod:`.tiny` / :mod:`.tokenizer`: ``build_tiny``, ``build_tiny_model``, ``train_tokenizer``.
- :mod:`.batching`: ``encode_example(s)``, ``plan_batches``, ``collate``, ``completion_loss``.
- :mod:`.generation`: ``generate`` (batched, left-padded, stops at the end of the SQL),
  ``clean_sql``, ``encode_prompts``, ``EMPTY_PREDICTION``.
- :mod:`.augment`: ``swap_copied_values`` (SFT value augmentation).
"""
