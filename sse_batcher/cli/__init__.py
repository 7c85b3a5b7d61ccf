"""The ``sse-batcher`` command: serve, demo, publish.

May import anything; nothing imports it.
"""
