"""Maintainer tools: generators of the docs' generated sections (``python -m tools.api_doc``)."""
