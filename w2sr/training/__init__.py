"""Training the student (``w2sr fit``): module (StudentModule, the step), loading (model, tokenizer, quantization,
LoRA), losses, attention, datamodule, batching (the per-step plan), token_cache, callbacks, strategies, memory (the
pre-flight estimate, no torch) and export (adapters, merged and consolidated models).
"""
