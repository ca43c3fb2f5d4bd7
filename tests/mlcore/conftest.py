"""Fixtures of the mlcore unit tests live in ``tests/conftest.py`` (the ``loop`` home is shared
with the fault tests)."""
