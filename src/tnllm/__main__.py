"""``python -m tnllm``: the ``tnllm`` command."""

from tnllm.cli.main import main

raise SystemExit(main())
