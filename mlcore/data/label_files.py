"""A labels file read and checked as a whole: the key and target columns of a parquet or CSV
file, every key valid for the spec's entity, every label valid for the target (coded as the
target's coder codes it; never imputed), no key twice, every key a row of its batch. Any bad row
refuses the file (``LabelsRejected``, naming the batch, the count and examples); storing the
labels is ``mlcore.labels``'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlcore.batches import BatchError
from mlcore.data.io import nullable_int
from mlcore.data.parsing import entity_keys
from mlcore.data.target_coding import TargetCoder, local_coder
from mlcore.problems import ProblemSpec

_EXAMPLES = 5


class LabelsRejected(BatchError, ValueError):
    """The labels file was refused as a whole; nothing was stored."""


def refusal(batch_id: str, problem: str, examples: Any) -> str:
    """Why a labels file is refused, with a few ``examples`` (keys or row numbers)."""
    shown = ", ".join(repr(x) for x in list(examples)[:_EXAMPLES])
    return f"labels for batch {batch_id!r}: {problem} (e.g. {shown}); the file is refused, " \
           "nothing stored"


def key_strings(keys: pd.Series, spec: ProblemSpec) -> pd.Series:
    """Entity keys as stored in ``predictions`` and ``ground_truth`` (``str`` of the dtype)."""
    if spec.entity.dtype == "int64":
        return pd.Series(keys.to_numpy(dtype="int64"), index=keys.index).astype(str)
    return keys.astype(str)


def read_labels(path: Path, spec: ProblemSpec, batch_id: str) -> pd.DataFrame:
    """The key and target columns of a parquet or CSV file (other columns are ignored).

    Raises:
        LabelsRejected: not a readable parquet/CSV file, or a column is missing.
    """
    wanted = [spec.entity.key, spec.target.name]
    if path.suffix not in {".parquet", ".pq", ".csv"}:
        raise LabelsRejected(f"labels for batch {batch_id!r}: unsupported file type "
                             f"{path.name!r} (parquet or csv)")
    try:
        if path.suffix == ".csv":
            columns = list(pd.read_csv(path, nrows=0).columns)
        else:
            columns = list(pq.ParquetFile(path).schema_arrow.names)
        if missing := [c for c in wanted if c not in columns]:
            raise LabelsRejected(f"labels for batch {batch_id!r}: {path.name} lacks columns "
                                 f"{missing} (needs {wanted}); nothing stored")
        if path.suffix == ".csv":  # keys as text, parsed exactly (never via float64)
            return pd.read_csv(path, usecols=wanted, dtype={spec.entity.key: str})
        table = pq.read_table(path, columns=wanted)
        frame = table.to_pandas()
        key = table.column(spec.entity.key)
        if pa.types.is_integer(key.type) and key.null_count:  # not float64 with NaN
            frame[spec.entity.key] = key.to_pandas(types_mapper=nullable_int)
        return frame
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        if isinstance(exc, LabelsRejected):
            raise
        raise LabelsRejected(f"labels for batch {batch_id!r}: {path} is not a readable parquet "
                             f"or CSV file ({type(exc).__name__}: {exc})") from exc


def clean_labels(raw: pd.DataFrame, spec: ProblemSpec, batch_id: str,
                 coder: TargetCoder | None = None) -> pd.DataFrame:
    """Validated labels as (``entity_key`` str, ``label`` float64 encoded by ``coder``: binary
    0/1, multiclass the class's position, regression the value). Any bad row refuses the file.

    Raises:
        LabelsRejected: no rows; a key missing or not of the spec's dtype; a label that is not
            valid for the target (a missing label is refused, never imputed); a key more than
            once.
    """
    key_col, target = spec.entity.key, spec.target.name
    if raw.empty:
        raise LabelsRejected(f"labels for batch {batch_id!r}: the file has no rows")
    keys = entity_keys(raw[key_col], spec)
    if (bad := keys.isna().to_numpy()).any():
        raise LabelsRejected(refusal(batch_id, f"{int(bad.sum())} rows have {key_col} missing "
                                      f"or not a valid {spec.entity.dtype}; row numbers",
                                      np.flatnonzero(bad)))
    coder = coder or local_coder(spec, raw[target])
    label = coder.encode(raw[target])
    if (bad := np.isnan(label)).any():
        raise LabelsRejected(refusal(batch_id, f"{int(bad.sum())} rows have {target} missing "
                                      f"or not {coder.describe()} (labels are never imputed); "
                                      "row numbers", np.flatnonzero(bad)))
    out = pd.DataFrame({"entity_key": key_strings(keys, spec).to_numpy(), "label": label})
    if (dup := out["entity_key"].duplicated(keep=False).to_numpy()).any():
        repeated = out.loc[dup, "entity_key"].unique()
        raise LabelsRejected(refusal(batch_id, f"{len(repeated)} keys appear more than once",
                                      repeated))
    return out


def check_known(labels: pd.DataFrame, batch_keys: pd.Series, batch_id: str) -> None:
    """Every key of ``labels`` must be a row of the batch (``batch_keys``, as ``key_strings``).

    Raises:
        LabelsRejected: naming how many keys are not, with examples.
    """
    unknown = ~labels["entity_key"].isin(batch_keys).to_numpy()
    if unknown.any():
        raise LabelsRejected(refusal(
            batch_id, f"{int(unknown.sum())} of {len(labels)} keys are not rows of the batch "
            "(another batch's, or quarantined when it was ingested)",
            labels.loc[unknown, "entity_key"]))
