"""``sraq intent``: the decision tiers (the group; its commands live in sibling modules)."""

from __future__ import annotations

import click


@click.group()
def intent() -> None:
    """Intent decision tiers: train the embedded model, evaluate any tier."""
