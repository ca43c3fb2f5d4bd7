"""Fixtures of the mlcore unit tests. Most live in ``tests/conftest.py`` (the ``loop`` home is
shared with the fault tests); here: what only the mlcore tests use."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def curated(spec, slices) -> pd.DataFrame:
    """1,500 typed rows of 2015 plus 1,500 of 2016, as the curated store holds them."""
    from mlcore.data.curation import curate

    return pd.concat([curate(pd.read_parquet(slices[y]), spec) for y in (2015, 2016)],
                     ignore_index=True)
