"""The ``tnllm`` command: ``up`` and the single-part commands, the supervisor, ``generate``,
``download`` and ``demo-model``. Subcommand modules are imported only when chosen."""
