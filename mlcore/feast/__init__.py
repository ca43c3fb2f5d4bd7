"""Feast wing: the feature store, every retrieval path and the online stores."""
