"""tnllm GPU/CPU worker side: model, engine and Celery tasks."""
