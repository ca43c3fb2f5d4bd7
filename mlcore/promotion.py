"""Promotion: the only code that moves the ``champion``/``challenger`` aliases and records an
evaluation. Every move goes through the registry's compare-and-set (``move_alias``, which checks
the artifact's SHA-256 first); what to move, when, and with which reason lives here."""

from __future__ import annotations

from typing import Any

from mlcore.config import Settings
from mlcore.evaluation import KEEP_TOO_CLOSE
from mlcore.model.registry import CHALLENGER, alias_holder, move_alias


def mark_challenger(problem: str, decision: dict[str, Any], settings: Settings,
                    actor: str | None = None) -> int | None:
    """Make a too-close contender the ``challenger`` (shadow-scored next to the champion).

    Returns:
        The contender's version, or None when the decision is not "too close to call".
    """
    if decision["outcome"] != KEEP_TOO_CLOSE:
        return None
    url = settings.db_url
    move_alias(problem, alias=CHALLENGER, url=url, new=decision["contender_version"],
               expected=alias_holder(problem, url, CHALLENGER), reason=decision["reason"],
               evaluation_id=decision["evaluation_id"], actor=actor, settings=settings)
    return int(decision["contender_version"])


def promote_contender(problem: str, decision: dict[str, Any], settings: Settings,
                      actor: str | None = None) -> int:
    """Move the champion from the decision's champion to its contender (compare-and-set).

    Returns:
        The new champion's version.

    Raises:
        AliasConflict: the champion moved since the decision was taken.
    """
    move_alias(problem, expected=decision["champion_version"],
               new=decision["contender_version"], reason=decision["reason"],
               url=settings.db_url, evaluation_id=decision["evaluation_id"], actor=actor,
               settings=settings)
    return int(decision["contender_version"])
