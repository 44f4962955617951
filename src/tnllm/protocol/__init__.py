"""Torch-free contracts that cross a process boundary: job records, the sampling parameters, task and
queue names, priorities, the Celery app factory, webhook events and the delivery log's shape."""
