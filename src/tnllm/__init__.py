"""tnllm: a queue-backed text-generation service for TransNormerLLM.

Rooms (imports run one way, see tests/test_layers.py): ``config``/``errors``/``logging`` ←
``protocol`` ← ``text`` ← ``store`` ← {``api``, ``webhooks``, ``worker``}; ``model`` ← ``engine`` ←
``worker``; ``cli`` on top. Importing this package imports nothing else.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tnllm")
except PackageNotFoundError:  # a source tree without an install
    __version__ = "0.0.0"
