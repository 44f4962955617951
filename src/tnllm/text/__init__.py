"""Torch-free text handling: the checkpoint's tokenizer, the chat template, prompt rendering, the
incremental detokeniser and stop strings."""
