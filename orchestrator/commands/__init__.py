"""Command groups of the ``sraq`` CLI."""
