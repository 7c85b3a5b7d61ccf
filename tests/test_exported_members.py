"""The public surface: ``__all__`` is sorted, complete, and names only public things."""

from __future__ import annotations

import sse_batcher


def test_all_is_sorted_and_unique() -> None:
    assert sse_batcher.__all__ == sorted(set(sse_batcher.__all__))


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(sse_batcher).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("sse_batcher")
    }
    assert public <= set(sse_batcher.__all__)


def test_every_exported_member_exists_and_comes_from_a_private_module() -> None:
    for name in sse_batcher.__all__:
        member = getattr(sse_batcher, name)
        module = getattr(member, "__module__", "sse_batcher._")
        # Every public name lives in a private module (a leading underscore on the last
        # part): the sub-packages are folders, the modules in them are not API.
        assert module.startswith("sse_batcher."), f"{name} comes from {module}"
        assert module.rpartition(".")[2].startswith("_"), f"{name} comes from {module}"
