"""Webhook callbacks: SSRF guard (ssrf, transport), signing, the delivery log and schedule (store),
one attempt (delivery), the task body (runner), the schedule pump and the CPU worker (worker).

Torch-free: the API imports ``events``, ``ssrf`` and ``store``.
"""
