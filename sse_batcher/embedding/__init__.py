"""Embedding: ``Service``, the one wiring from settings to a running journal, batcher and app.

May import: ``batching``, ``journals``, ``sinks``, ``service`` and the base modules.
"""
