"""tnllm HTTP API (FastAPI). Never imports torch."""
