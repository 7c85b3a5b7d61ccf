"""Journals: where batches are appended and read back (SQLite, Redis).

May import: ``sse_batcher.batching`` (events, the Journal protocol) and
``sse_batcher._exceptions``.
"""
