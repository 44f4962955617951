"""The demo corpus (package data): lines written for the tnllm demo tokenizer."""
