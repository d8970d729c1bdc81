"""Adapters for what serves the models on a machine."""
