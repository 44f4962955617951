"""The GPU worker process: Celery tasks, the job runner, active jobs, the stream pump, leases and
the reaper. It talks to its engine through ``tnllm.engine.client`` and never touches tensors."""
