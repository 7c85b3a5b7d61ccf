"""Channel patterns: what a subscriber asks for, what a token allows, and the index
that finds the subscribers of one channel without looking at the others.

A pattern is an exact channel (``user.42``), a channel followed by ``.*`` (every
channel strictly below it: ``user.42.*`` matches ``user.42.jobs`` and
``user.42.jobs.7``, not ``user.42``), or ``*`` (every channel).

The index keeps exact names in a dict and ``.*`` patterns in a tree of segments, so
finding who wants ``user.42.jobs`` costs one dict lookup plus one step per segment,
whatever the number of subscribers::

    exact:  {"user.42": {k1}, "user.43.jobs": {k2}}
    tree:   root {k3 (pattern "*")}
             └ "user" {k4 ("user.*")}
                 └ "42" {k5 ("user.42.*")}
    match("user.42.jobs") = root + exact["user.42.jobs"] + user + user.42  → k3, k4, k5
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from sse_batcher._exceptions import InvalidEvent
from sse_batcher.batching._events import check_channel

__all__ = [
    "ALL_CHANNELS",
    "MAX_CHANNEL_PATTERNS",
    "ChannelFilter",
    "ChannelIndex",
    "check_pattern",
    "covers",
    "normalize",
]

ANY = "*"
ALL_CHANNELS: frozenset[str] = frozenset((ANY,))
# Patterns one request may name (``?channel=`` repeated): each costs an index entry
# per subscriber and a comparison per replayed event.
MAX_CHANNEL_PATTERNS = 32

K = TypeVar("K")


def check_pattern(value: object) -> str:
    """Return ``value`` if it is a valid channel pattern, else raise ``InvalidEvent``."""
    if value == ANY:
        return ANY
    if isinstance(value, str) and value.endswith(".*"):
        check_channel(value[:-2])
        return value
    try:
        return check_channel(value)
    except InvalidEvent as exc:
        raise InvalidEvent(f"{exc} (a pattern is a channel, a channel + '.*', or '*')") from None


def covers(pattern: str, other: str) -> bool:
    """Whether every channel ``other`` matches is matched by ``pattern`` too."""
    if pattern == ANY:
        return True
    if other == ANY:
        return False
    if pattern.endswith(".*"):
        return other.startswith(pattern[:-1])  # "user.42.7", "user.42.x.*"
    return pattern == other


def normalize(patterns: Iterable[str]) -> frozenset[str]:
    """The smallest equivalent set: drop every pattern another one covers.

    Of what is left, at most one pattern matches any channel (two ``.*`` patterns
    both matching one channel would be nested; an exact name under a ``.*`` is
    covered), so the index yields each subscriber at most once per event.
    """
    unique = set(patterns)
    if ANY in unique:
        return ALL_CHANNELS
    return frozenset(p for p in unique if not any(q != p and covers(q, p) for q in unique))


class ChannelFilter:
    """A normalized pattern set as a quick test of one channel (replay, history)."""

    __slots__ = ("_all", "_exact", "_prefixes", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = normalize(patterns)
        self._all = ANY in self.patterns
        self._exact = frozenset(p for p in self.patterns if not p.endswith(".*"))
        self._prefixes = tuple(p[:-1] for p in self.patterns if p.endswith(".*"))

    def __call__(self, channel: str) -> bool:
        return self._all or channel in self._exact or channel.startswith(self._prefixes)


class _Node(Generic[K]):
    __slots__ = ("children", "keys")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K]] = {}
        self.keys: dict[K, None] = {}  # an insertion-ordered set


class ChannelIndex(Generic[K]):
    """Keys (the hub's subscriber groups) registered under normalized pattern sets."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[K, None]] = {}
        self._root: _Node[K] = _Node()
        self._prefix_count = 0  # keys under ``.*`` patterns (not "*"): 0 skips the walk

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._exact.values()) + self._tree_size(self._root)

    def add(self, patterns: frozenset[str], key: K) -> None:
        """Register ``key`` under every pattern of a ``normalize``d set."""
        for pattern in patterns:
            if pattern.endswith(".*") or pattern == ANY:
                node = self._root
                if pattern != ANY:
                    self._prefix_count += 1
                    for segment in pattern[:-2].split("."):
                        node = node.children.setdefault(segment, _Node())
                node.keys[key] = None
            else:
                self._exact.setdefault(pattern, {})[key] = None

    def remove(self, patterns: frozenset[str], key: K) -> None:
        """Unregister ``key`` from the patterns it was added with; prune empty nodes."""
        for pattern in patterns:
            if pattern.endswith(".*") or pattern == ANY:
                if pattern == ANY:
                    self._root.keys.pop(key, None)
                    continue
                self._prefix_count -= 1
                path = [self._root]
                for segment in pattern[:-2].split("."):
                    child = path[-1].children.get(segment)
                    if child is None:
                        break
                    path.append(child)
                else:
                    path[-1].keys.pop(key, None)
                    segments = pattern[:-2].split(".")
                    for depth in range(len(segments), 0, -1):
                        node = path[depth]
                        if node.keys or node.children:
                            break
                        del path[depth - 1].children[segments[depth - 1]]
            else:
                keys = self._exact.get(pattern)
                if keys is not None:
                    keys.pop(key, None)
                    if not keys:
                        del self._exact[pattern]

    def match(self, channel: str) -> list[K]:
        """Every key whose patterns match ``channel`` (each once, for normalized sets)."""
        root = self._root
        found = list(root.keys)
        exact = self._exact.get(channel)
        if exact:
            found.extend(exact)
        if self._prefix_count:
            node = root
            segments = channel.split(".")
            for segment in segments[:-1]:  # ".*" is strictly below: not the last segment
                child = node.children.get(segment)
                if child is None:
                    break
                node = child
                if node.keys:
                    found.extend(node.keys)
        return found

    def _tree_size(self, node: _Node[K]) -> int:
        return len(node.keys) + sum(self._tree_size(c) for c in node.children.values())
