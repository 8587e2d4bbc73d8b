"""Handlers shipped with sraq: ``demo`` (simulated multi-step work) and ``llm`` (OpenAI-compatible chat)."""
