"""Label coding of every target kind: the fixed class list of a classification problem and
labels encoded as the models see them.

Encoding (curated files, training sets, ground truth): ``binary`` 1 for the positive label and
0 for the other; ``multiclass`` the label's position in the class list; ``regression`` the float.
The class list is the spec's ``classes`` when declared, else (multiclass, or binary with a
non-boolean ``positive``) learnt from the first labelled batch and then fixed in the store
(``target_classes``); a later label outside it is a bad row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.exc import IntegrityError

from mlcore.columns import factorize, label_key, missing, parse_bool, vocabulary_codes
from mlcore.data.parsing import numeric
from mlcore.problems import ProblemSpec
from mlcore.store.models import TargetClasses
from mlcore.store.session import session_scope


class _Unseen:
    """Stands for the negative label of a binary target not seen yet (matches no label)."""

    def __repr__(self) -> str:
        return "<no other label seen>"


UNSEEN = _Unseen()


class ClassesUnknown(ValueError):
    """A classification problem's class list is not known yet (no labelled batch so far)."""


@dataclass(frozen=True)
class TargetCoder:
    """How labels of one problem are encoded; ``classes`` None for regression (and for binary
    targets read as booleans, where ``positive_true`` says which boolean is positive)."""

    kind: str
    classes: tuple[Any, ...] | None
    positive: int = 1  # binary: the positive label's position in ``classes``
    positive_true: bool = True

    @property
    def class_names(self) -> list[str]:
        """The labels as text, in code order (binary: negative first)."""
        if self.kind == "regression":
            return []
        if self.classes is None:
            return ["false", "true"] if self.positive_true else ["true", "false"]
        if self.kind == "binary":
            other = 1 - self.positive
            return [label_key(self.classes[other]), label_key(self.classes[self.positive])]
        return [label_key(c) for c in self.classes]

    @property
    def learnable(self) -> bool:
        """Its classes are real labels (not a stand-in for one not seen yet)."""
        return self.classes is not None and UNSEEN not in self.classes

    @property
    def n_classes(self) -> int:
        """How many classes (0 for regression)."""
        return len(self.class_names)

    def encode(self, col: pd.Series) -> np.ndarray:
        """The encoded labels (float64), NaN where a label is missing or not a valid one."""
        if self.kind == "regression":
            values = numeric(col).to_numpy()
            return np.where(np.isfinite(values), values, np.nan)
        if self.classes is None:  # booleans in any form: each distinct value read once
            codes, uniques = factorize(col)
            flags = parse_bool(pd.Series(uniques, dtype=object)).tolist()
            table = [np.nan if f is None else float(f == self.positive_true) for f in flags]
            return np.array([*table, np.nan], dtype="float64")[codes]
        codes = vocabulary_codes(col, self.classes)
        if self.kind == "binary":
            return np.where(np.isnan(codes), np.nan, (codes == self.positive).astype("float64"))
        return codes

    def describe(self) -> str:
        """The valid labels, for error messages."""
        if self.kind == "regression":
            return "a finite number"
        if self.classes is None:
            return "0/1 (or true/false, yes/no)"
        return "one of " + ", ".join(repr(c) for c in self.classes)

    def decode(self, codes: np.ndarray) -> list[str]:
        """Class names of encoded labels (classification only)."""
        names = np.array(self.class_names, dtype=object)
        return names[np.asarray(codes, dtype="int64")].tolist()


def _declared(spec: ProblemSpec) -> TargetCoder | None:
    t = spec.target
    if t.kind == "regression":
        return TargetCoder("regression", None)
    if t.classes is not None:
        keys = [label_key(c) for c in t.classes]
        positive = keys.index(label_key(t.positive)) if t.positive is not None else 1
        return TargetCoder(t.kind, tuple(t.classes), positive)
    if t.kind == "binary" and (t.positive is None or isinstance(t.positive, bool)
                               or label_key(t.positive) in ("0", "1")):
        positive = t.positive is None or label_key(t.positive) in ("true", "1")
        return TargetCoder("binary", None, positive_true=positive)
    return None


def _learnt(spec: ProblemSpec, classes: list[Any]) -> TargetCoder:
    if spec.target.kind == "multiclass":
        return TargetCoder("multiclass", tuple(classes))
    keys = [label_key(c) for c in classes]
    return TargetCoder("binary", tuple(classes), keys.index(label_key(spec.target.positive)))


def stored_classes(problem: str, url: str) -> list[Any] | None:
    """The class list learnt for ``problem`` (None: not learnt)."""
    with session_scope(url) as s:
        row = s.get(TargetClasses, problem)
        return None if row is None else list(row.classes)


def target_coder(spec: ProblemSpec, url: str) -> TargetCoder:
    """The problem's coder: declared, or learnt earlier.

    Raises:
        ClassesUnknown: the classes are learnt from the first labelled batch, and none came yet.
    """
    coder = _declared(spec)
    if coder is not None:
        return coder
    classes = stored_classes(spec.name, url)
    if classes is None:
        raise ClassesUnknown(f"problem {spec.name!r}: the classes of {spec.target.name!r} are "
                             "learnt from the first labelled batch, and none was ingested yet")
    return _learnt(spec, classes)


def learnt_classes(spec: ProblemSpec, labels: pd.Series) -> list[Any]:
    """The distinct non-missing labels of a column, sorted by their text. For a binary target:
    the positive label and the most frequent other one (a stray third label is then a bad row,
    not a class)."""
    values = labels[~missing(labels)]
    counts = values.astype(object).map(label_key).value_counts()
    by_key = {label_key(v): _plain(v) for v in pd.unique(values.to_numpy(dtype=object))}
    if spec.target.kind == "binary":
        positive = label_key(spec.target.positive)
        others = [k for k in counts.index if k != positive]
        keep = ([positive] if positive in by_key else []) + others[:1]
        by_key = {k: by_key[k] for k in keep}
    return [by_key[k] for k in sorted(by_key)]


def local_coder(spec: ProblemSpec, labels: pd.Series) -> TargetCoder:
    """The declared coder, or one learnt from ``labels`` alone (nothing stored): for checks of
    an in-memory frame. A binary target whose labels lack ``positive`` or any other label gets
    a coder that accepts the positive label alone (the others are bad rows)."""
    coder = _declared(spec)
    if coder is not None:
        return coder
    classes = learnt_classes(spec, labels)
    if spec.target.kind == "binary":
        keys = [label_key(c) for c in classes]
        if len(classes) != 2 or label_key(spec.target.positive) not in keys:
            return TargetCoder("binary", (spec.target.positive, UNSEEN), 0)
    return _learnt(spec, classes)


def fix_classes(problem: str, classes: list[Any], source: str, url: str) -> list[Any]:
    """Store ``classes`` as the problem's fixed list unless one is stored; the stored list."""
    try:
        with session_scope(url) as s:
            if s.get(TargetClasses, problem) is None:
                s.add(TargetClasses(problem=problem, classes=[_plain(c) for c in classes],
                                    source=source))
    except IntegrityError:
        pass  # a concurrent first batch fixed them
    return stored_classes(problem, url) or classes


def learn_coder(spec: ProblemSpec, url: str, labels: pd.Series, batch_id: str) -> TargetCoder:
    """``target_coder``, learning and fixing the class list from ``labels`` (a batch's target
    column) when the problem has none yet. Learnt classes are the distinct non-missing labels,
    sorted by their text; a concurrent first batch that fixed them first wins.

    Raises:
        ValueError: a binary target whose labels are not exactly two, one of them ``positive``.
    """
    try:
        return target_coder(spec, url)
    except ClassesUnknown:
        pass
    classes = learnt_classes(spec, labels)
    if spec.target.kind == "binary":
        if len(classes) != 2 or label_key(spec.target.positive) not in map(label_key, classes):
            raise ValueError(f"batch {batch_id!r}: a binary target needs exactly two labels, one "
                             f"of them {spec.target.positive!r}; found {classes[:10]}")
    elif len(classes) < 2:
        raise ValueError(f"batch {batch_id!r}: a multiclass target needs at least two labels "
                         f"in the first labelled batch; found {classes}")
    try:
        with session_scope(url) as s:
            s.add(TargetClasses(problem=spec.name, classes=classes, source=f"batch {batch_id}"))
    except IntegrityError:
        pass  # another first batch fixed them: use those
    return target_coder(spec, url)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
