"""The engine in a process of its own, spoken to over a socket pair (JSON frames, no pickle).

A GPU worker's Celery threads (the consumer, one task thread per job, the stream pump, the
heartbeat) share one GIL. When 256 jobs are claimed at once they hold it most of the time, and an
engine thread in the same process queues for it after every PyTorch call that releases it
(hundreds per prefill step): its first steps took seconds instead of ~1 s on an H100
(docs/PERFORMANCE.md). ``EngineClient`` (client.py, torch-free) gives the worker the engine's
``submit`` / ``cancel`` / ``stats`` / ``stop`` and runs the real ``Engine`` in a child process
(child.py); messages.py is the wire format both sides share.
"""
