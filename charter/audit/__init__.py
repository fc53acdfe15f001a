"""Audit of the event log (docs/audit.md): chain verification, anchors, replay and what-if;
`charter audit` lives in `charter.cli.audit`.
"""

from __future__ import annotations

from charter.audit.replay import (
    ANCHOR_FORMAT,
    GOVERNANCE_KINDS,
    OUTCOME_NAMES,
    Anchor,
    Change,
    Divergence,
    ReplayReport,
    VerifyReport,
    WhatIfReport,
    anchor_document,
    execution_ids,
    read_anchor,
    replay_run,
    verify_log,
    what_if,
)

__all__ = [
    "ANCHOR_FORMAT",
    "GOVERNANCE_KINDS",
    "OUTCOME_NAMES",
    "Anchor",
    "Change",
    "Divergence",
    "ReplayReport",
    "VerifyReport",
    "WhatIfReport",
    "anchor_document",
    "execution_ids",
    "read_anchor",
    "replay_run",
    "verify_log",
    "what_if",
]
