"""Argument checks that every network's constructor shares."""

from __future__ import annotations


def check_sizes(in_channels: int, **sizes: int) -> None:
    """Refuse a channel count or a size (width, depth, ...) below 1, naming the argument."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
