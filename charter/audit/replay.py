"""Audit: prove the log unaltered, recompute its decisions, and ask "what if" (docs/audit.md).

Three questions an auditor asks of a store, each answered from the log alone:

* `verify_log` — *was the log altered?* Every stored event carries the hash of the event
  before it and its own hash over its canonical envelope (`charter.adapters.chain`). The
  chains are read a page at a time (`Store.read_chain`) and checked with
  `ChainVerifier`, so memory does not grow with the log. An `Anchor` exported earlier
  (`anchor_document`: each run's last sequence and hash) also catches what a chain alone
  cannot: a truncated tail, or a tail rewritten with fresh hashes.
* `replay_run` — *is every recorded decision what the policy produces?* Each
  ``node_gated`` records its inputs' position in the log (``as_of``), its clock and the
  digests of the policy sets it used; the run's state, approvals and budget are rebuilt by
  folding the log up to that position, the tenant policy set is fetched by its digest
  (`Store.get_policy_set`), the workflow and node policies come from the stored
  definition, and `charter.core.gate_node` is asked again — through the same
  `charter.core.attempt.node_gate_request` the worker used. Each settlement (``usage_recorded``
  after a run decision, with any budget trip) is recomputed with `settle_node` likewise.
  Recomputed events must equal the recorded ones exactly (canonical JSON); every
  difference is a `Divergence`, and so is a node that completed without a decision to run.
  A decision whose ``as_of`` event is an ``agent_tool_invoked`` of its node (a call
  governed by `charter.integrations.govern`) was asked about that invocation: its call
  also names the invocation's ``input_hash`` (`invocation_request`), as it was when made.
* `what_if` — *what would a proposed policy have changed?* The same recorded requests,
  decided again with the tenant (or workflow) policy replaced, compared by outcome.

Nothing here writes to the store.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import attrs

from charter.adapters.chain import GENESIS, ChainProblem, ChainVerifier, canonical_text
from charter.adapters.codec import dump
from charter.adapters.keys import verify
from charter.core.approvals import ApprovalStatus, NotRequested, Pending, approval_step
from charter.core.attempt import node_gate_request
from charter.core.budget import BudgetState, Usage, budget_after
from charter.core.canonical import content_digest
from charter.core.compaction import Compaction
from charter.core.errors import InvalidInput, NotFound, StoreError
from charter.core.events import (
    AgentToolInvoked,
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalExpired,
    ApprovalReceived,
    AutonomyLimitReached,
    CircuitBreakerTripped,
    CostBudgetExceeded,
    EscalationRequired,
    Event,
    EventKind,
    LimitCharged,
    NodeCompleted,
    NodeFailed,
    NodeGated,
    OutcomeResolved,
    OutcomeUnknown,
    PolicyViolation,
    RateLimitExceeded,
    TokenBudgetExceeded,
    ToolApprovalRequired,
    UsageRecorded,
    event_type,
)
from charter.core.expiry import expiry_of
from charter.core.gate import (
    GateInputError,
    GateRequest,
    GateResult,
    Outcome,
    SettleRequest,
    gate_node,
    settle_node,
)
from charter.core.limits import expected_charge, matching_limits, usage_from_record
from charter.core.policy import PolicyScope, PolicySet
from charter.core.ports import Store
from charter.core.records import Execution
from charter.core.scheduler import RunState
from charter.core.signing import Signature, Statement, check_signed_answer, decode_key
from charter.core.workflow import WorkflowDef, WorkflowInvalid
from charter.worker import Definitions

__all__ = [
    "ANCHOR_FORMAT",
    "GOVERNANCE_KINDS",
    "OUTCOME_NAMES",
    "Anchor",
    "Change",
    "CompactedPrefix",
    "Divergence",
    "ReplayReport",
    "VerifyReport",
    "WhatIfReport",
    "anchor_document",
    "execution_ids",
    "invocation_request",
    "read_anchor",
    "replay_run",
    "verify_log",
    "what_if",
]

#: The ``format`` of an anchor file.
ANCHOR_FORMAT: Final = "charter-anchor/1"
#: Events read per page.
PAGE: Final = 2000
#: Outcomes as an auditor names them: a decision to run allows the node, a hold waits for a
#: person, a failure at the gate blocks it (policy, autonomy, circuit breaker or budget).
OUTCOME_NAMES: Final = {"run": "allow", "hold": "hold", "fail": "block"}
_NOT_REQUESTED: Final = NotRequested()
#: Node kinds the scheduler settles itself (they are never gated: a person answers them).
_UNGATED: Final = frozenset({"human_approval"})
#: Events only a decision produces: each one in the log must be one a recomputed gate
#: decision or settlement produces too. (``tool_approval_required`` is not among them: the
#: scheduler asks for ``human_approval`` nodes' answers with it too; a forged request
#: grants nothing.)
GOVERNANCE_KINDS: Final = (
    PolicyViolation,
    CircuitBreakerTripped,
    AutonomyLimitReached,
    EscalationRequired,
    TokenBudgetExceeded,
    CostBudgetExceeded,
    RateLimitExceeded,
    ApprovalConsumed,
    ApprovalExpired,
)


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.isoformat()


def invocation_request(request: GateRequest, invoked: AgentToolInvoked) -> GateRequest:
    """``request`` (a node's, from `node_gate_request`) bound to one invocation of the
    node: its call also names the invocation's ``input_hash``, so the call digest, and the
    request digest an approval binds to, differ for every different input. What a governed
    call (`charter.integrations.govern`) is decided on, and what replay rebuilds for a
    decision whose ``as_of`` event is that ``agent_tool_invoked``."""
    call = request.call if isinstance(request.call, dict) else {"call": request.call}
    return attrs.evolve(request, call={**call, "input": invoked.input_hash})


def execution_ids(store: Store) -> Iterator[str]:
    """Every execution of the store, in creation order, a page at a time."""
    cursor = None
    while True:
        page = store.list_executions(cursor=cursor, limit=500)
        for execution in page.items:
            yield execution.execution_id
        cursor = page.next_cursor
        if cursor is None:
            return


# ── verify and anchor ─────────────────────────────────────────────────────────────────


@attrs.frozen
class Anchor:
    """A run's chain head at one moment: its last sequence and that event's hash."""

    sequence: int
    hash: str


@attrs.frozen(kw_only=True)
class CompactedPrefix:
    """A run's compacted prefix as `verify_log` found it (docs/semantics.md §10): events
    1–``through`` were removed by ``compactions`` compaction(s), the last of them had
    ``hash``; ``archived`` is the number of those events checked from archives."""

    through: int
    hash: str
    compactions: int
    archived: int


@attrs.frozen(kw_only=True)
class VerifyReport:
    """What `verify_log` checked and found. ``heads`` is each verified run's head (what an
    anchor of this log would hold); ``compacted`` each compacted run's removed prefix;
    ``notes`` what could not be checked and why (not problems)."""

    executions: int
    events: int
    problems: tuple[ChainProblem, ...]
    heads: Mapping[str, Anchor]
    anchored: int = 0
    compacted: Mapping[str, CompactedPrefix] = attrs.Factory(dict)
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_log(
    store: Store,
    *,
    runs: Iterable[str] | None = None,
    anchors: Mapping[str, Anchor] | None = None,
    strict: bool = False,
    page: int = PAGE,
) -> VerifyReport:
    """Check the chain of every run (or of ``runs``), a page at a time; with ``anchors``,
    also that each anchored event is still there unchanged (a run the anchor names that is
    gone entirely is a problem too). With ``strict``, each event's kind must also be in
    canonical JSON form (what Charter writes; a different but equivalent form that hashes
    right means a writer other than Charter)."""
    anchors = anchors or {}
    problems: list[ChainProblem] = []
    heads: dict[str, Anchor] = {}
    compacted: dict[str, CompactedPrefix] = {}
    notes: list[str] = []
    events = 0
    wanted = execution_ids(store) if runs is None else iter(runs)
    seen: set[str] = set()
    for execution_id in wanted:
        if execution_id in seen:
            continue
        seen.add(execution_id)
        verifier = ChainVerifier(execution_id, strict=strict)
        anchor = anchors.get(execution_id)
        try:
            history = store.compactions(execution_id)
            watch = _resume_compacted(store, verifier, history, compacted, problems)
            if anchor is not None and anchor.sequence <= verifier.last_sequence:
                _anchor_in_prefix(execution_id, anchor, history, problems, notes)
            elif anchor is not None:
                verifier.expect(anchor.sequence, anchor.hash)
            _feed_all(store, verifier, page, watch)
        except NotFound:
            problems.append(ChainProblem(execution_id, 0, None, "the run does not exist"))
            continue
        except (StoreError, InvalidInput, UnicodeError) as error:
            # Bytes that no longer decode are an alteration too: report where reading stopped.
            problems.extend(verifier.problems)
            problems.append(
                ChainProblem(
                    execution_id,
                    verifier.last_sequence + 1,
                    None,
                    f"the stored events from here on cannot be read ({error})",
                )
            )
            continue
        problems.extend(verifier.finish())
        events += verifier.count
        heads[execution_id] = Anchor(verifier.last_sequence, verifier.head)
    for execution_id, anchor in anchors.items():
        if execution_id not in seen and runs is None:
            problems.append(
                ChainProblem(
                    execution_id,
                    anchor.sequence,
                    None,
                    f"the anchored run is gone (it had {anchor.sequence} events)",
                )
            )
    return VerifyReport(
        executions=len(heads),
        events=events,
        problems=tuple(problems),
        heads=heads,
        anchored=sum(1 for execution_id in heads if execution_id in anchors),
        compacted=compacted,
        notes=tuple(notes),
    )


def _resume_compacted(
    store: Store,
    verifier: ChainVerifier,
    history: Sequence[Compaction],
    compacted: dict[str, CompactedPrefix],
    problems: list[ChainProblem],
) -> dict[int, Compaction]:
    """For a compacted run: check that its compaction records follow one another (each
    starts after the previous one, from its hash), and start ``verifier`` after the last
    compacted event not served from an archive — from the record's hash, which the next
    event must continue. Returns the records by their last sequence: an archived event
    there must have the record's hash."""
    if not history:
        return {}
    run = verifier.execution_id
    expected_first, expected_prev = 1, GENESIS
    for record in history:
        if (
            record.first_sequence != expected_first
            or record.prev_hash != expected_prev
            or record.events != record.through_sequence - record.first_sequence + 1
        ):
            problems.append(
                ChainProblem(
                    run,
                    record.first_sequence,
                    None,
                    f"the compaction record of events {record.first_sequence}–"
                    f"{record.through_sequence} does not follow the one before it (expected "
                    f"it to start at {expected_first} from hash {expected_prev[:12]}…)",
                )
            )
        expected_first, expected_prev = record.through_sequence + 1, record.hash
    first = store.read_chain(run, after=0, limit=1)
    start = first[0].sequence - 1 if first else history[-1].through_sequence
    base = next((r for r in history if r.through_sequence == start), None)
    if base is not None:
        verifier.resume(base.through_sequence, base.hash)
    last = history[-1]
    compacted[run] = CompactedPrefix(
        through=last.through_sequence,
        hash=last.hash,
        compactions=len(history),
        archived=max(0, last.through_sequence - start),
    )
    return {record.through_sequence: record for record in history}


def _anchor_in_prefix(
    run: str,
    anchor: Anchor,
    history: Sequence[Compaction],
    problems: list[ChainProblem],
    notes: list[str],
) -> None:
    """An anchored event that was compacted away: checked against the compaction record
    that ends at it, if any; otherwise it cannot be checked without the archive (a note)."""
    record = next((r for r in history if r.through_sequence == anchor.sequence), None)
    if record is None:
        notes.append(
            f"{run}: the anchored event {anchor.sequence} was compacted away; give the "
            "archive (--archive FILE) to check it"
        )
    elif record.hash != anchor.hash:
        problems.append(
            ChainProblem(
                run,
                anchor.sequence,
                None,
                "differs from the anchored event (the compaction record names another hash)",
            )
        )


def _feed_all(
    store: Store, verifier: ChainVerifier, page: int, watch: Mapping[int, Compaction] = {}
) -> None:
    after = verifier.last_sequence
    while True:
        try:
            links = store.read_chain(verifier.execution_id, after=after, limit=page)
        except (StoreError, InvalidInput, UnicodeError):
            # Something in this page cannot be read: go one event at a time up to it, so
            # the error is located at its event (the next read raises again, from there).
            while links := store.read_chain(verifier.execution_id, after=after, limit=1):
                verifier.feed(links)
                after = links[-1].sequence
            return
        if not links:
            return
        verifier.feed(links)
        for link in links:
            record = watch.get(link.sequence)
            if record is not None and record.hash != link.hash:
                verifier.problems.append(
                    ChainProblem(
                        verifier.execution_id,
                        link.sequence,
                        link.event_id,
                        "the archived event is not the one its compaction record summarises "
                        "(another hash)",
                    )
                )
        after = links[-1].sequence
        if len(links) < page:
            return


def anchor_document(
    report: VerifyReport,
    *,
    created_at: datetime,
    sign: Callable[[bytes], Signature] | None = None,
) -> dict[str, Any]:
    """The JSON an anchor file holds: each verified run's last sequence and head hash, and
    the log's size (runs, events); with ``sign`` (an auditor's key), a ``signature`` over
    the canonical JSON of everything else. Keep it somewhere the store's writers cannot
    reach (docs/audit.md)."""
    document: dict[str, Any] = {
        "format": ANCHOR_FORMAT,
        "created_at": created_at.isoformat(),
        "runs": {
            execution_id: {"sequence": head.sequence, "hash": head.hash}
            for execution_id, head in sorted(report.heads.items())
        },
        "size": {"runs": report.executions, "events": report.events},
    }
    if sign is not None:
        signature = sign(canonical_text(document).encode("utf-8"))
        document["signature"] = {"key": signature.key, "value": signature.value}
    return document


def read_anchor(path: str | Path, *, signed_by: Sequence[str] = ()) -> dict[str, Anchor]:
    """An anchor file's heads; a file that is not one is `InvalidInput` naming the file
    and the field. A signed anchor's signature is checked (a bad one is refused); with
    ``signed_by`` (auditors' public keys), an anchor must be signed by one of them."""
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidInput(where, f"cannot read the anchor file: {error.strerror}") from None
    except ValueError as error:
        raise InvalidInput(where, f"not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("format") != ANCHOR_FORMAT:
        raise InvalidInput(
            f"{where}: format", f"expected {ANCHOR_FORMAT!r} (a file from `charter audit anchor`)"
        )
    _check_anchor_signature(data, where, signed_by)
    runs = data.get("runs")
    if not isinstance(runs, dict):
        raise InvalidInput(f"{where}: runs", "expected an object of run id → {sequence, hash}")
    anchors = {}
    for execution_id, head in runs.items():
        field = f"{where}: runs.{execution_id}"
        if not isinstance(head, dict):
            raise InvalidInput(field, "expected an object {sequence, hash}")
        sequence, hash_ = head.get("sequence"), head.get("hash")
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
            raise InvalidInput(f"{field}.sequence", "expected a non-negative integer")
        if not isinstance(hash_, str) or len(hash_) != 64:
            raise InvalidInput(f"{field}.hash", "expected a SHA-256 hex digest (64 characters)")
        anchors[execution_id] = Anchor(sequence, hash_)
    return anchors


def _check_anchor_signature(data: dict[str, Any], where: str, signed_by: Sequence[str]) -> None:
    signature = data.get("signature")
    if signature is None:
        if signed_by:
            raise InvalidInput(f"{where}: signature", "the anchor is not signed")
        return
    if not (
        isinstance(signature, dict)
        and isinstance(signature.get("key"), str)
        and isinstance(signature.get("value"), str)
    ):
        raise InvalidInput(f"{where}: signature", "expected {key, value}")
    key, value = signature["key"], signature["value"]
    if signed_by and key not in signed_by:
        raise InvalidInput(f"{where}: signature", f"signed by {key}, not by a key given")
    unsigned = {name: field for name, field in data.items() if name != "signature"}
    try:
        public = decode_key(key, f"{where}: signature.key")
        raw = base64.b64decode(value, validate=True)
    except (InvalidInput, ValueError):
        raise InvalidInput(f"{where}: signature", "not a valid Ed25519 signature") from None
    if not verify(public, canonical_text(unsigned).encode("utf-8"), raw):
        raise InvalidInput(
            f"{where}: signature", "does not match the anchor: it was altered after signing"
        )


# ── replay ─────────────────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class Divergence:
    """A recorded event that recomputing its decision does not give (or a decision that
    could not be recomputed): where, and both versions as JSON."""

    execution_id: str
    sequence: int
    node_id: str | None
    problem: str
    recorded: Any = None
    recomputed: Any = None

    def __str__(self) -> str:
        node = f" {self.node_id}" if self.node_id else ""
        return f"{self.execution_id} #{self.sequence}{node}: {self.problem}"

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.execution_id,
            "sequence": self.sequence,
            "node": self.node_id,
            "problem": self.problem,
            "recorded": self.recorded,
            "recomputed": self.recomputed,
        }


@attrs.frozen(kw_only=True)
class ReplayReport:
    """A run's replay: how many decisions were recomputed and where they diverged."""

    execution_id: str
    events: int
    gates: int
    settlements: int
    divergences: tuple[Divergence, ...]

    @property
    def ok(self) -> bool:
        return not self.divergences


@attrs.frozen
class _Inputs:
    """What the gate read at one log position: the state's digest, budget and approvals,
    and the invocation recorded there (if the event at that position is one)."""

    state_digest: str
    budget: BudgetState
    approvals: Mapping[str, ApprovalStatus]
    invoked: AgentToolInvoked | None = None


@attrs.frozen
class _Expected:
    sequence: int
    kind: EventKind
    node_id: str
    what: str


@attrs.frozen(kw_only=True)
class _Decision:
    """One recorded gate decision recomputed (what `what_if` compares)."""

    sequence: int
    node_id: str
    attempt: int
    recorded: NodeGated
    recomputed: NodeGated | None


class _Replayer:
    """Walks one run's log twice: first for the log positions gates read their inputs at
    (``as_of``), then folding the log, keeping the inputs seen at those positions until the
    decisions that need them come by, and checking each recomputed event against the log."""

    def __init__(
        self,
        store: Store,
        execution_id: str,
        *,
        override: tuple[PolicyScope, PolicySet] | None = None,
        page: int = PAGE,
    ) -> None:
        self.store = store
        self.execution_id = execution_id
        self.override = override
        self.page = page
        self.divergences: list[Divergence] = []
        self.decisions: list[_Decision] = []
        self.gates = 0
        self.settlements = 0
        self.events = 0
        self._policy_sets: dict[str, PolicySet | None] = {}
        # nodes whose last decision diverged: their follow-on events are not reported again
        self._noisy: set[str] = set()
        # node → the tenant policy digest its latest hold was decided under (the keys an
        # answer to it must be signed with); node → its lost outcome waiting for an answer
        self._held_under: dict[str, str | None] = {}
        self._lost: dict[str, OutcomeUnknown] = {}
        # (node, attempt) → its run decision that matched windowed limits, and its usage
        self._charging: dict[tuple[str, int], NodeGated] = {}
        self._spent: dict[tuple[str, int], UsageRecorded] = {}
        # attempts under limits that completed (usage recorded as succeeded), by the event
        # that says so, until their charge comes by
        self._owed: dict[tuple[str, int], Event] = {}

    # -- inputs --

    def _execution(self) -> tuple[Execution, WorkflowDef]:
        execution = self.store.get_execution(self.execution_id)
        if execution is None:
            raise NotFound(f"run {self.execution_id!r} does not exist")
        try:
            return execution, Definitions(self.store).for_execution(execution)
        except WorkflowInvalid as error:
            raise InvalidInput(f"run {self.execution_id}", f"its definition: {error}") from None

    def _positions(self) -> set[int]:
        """The ``as_of`` of every recorded gate (read without decoding other events)."""
        wanted: set[int] = set()
        after = 0
        while True:
            links = self.store.read_chain(self.execution_id, after=after, limit=self.page)
            for link in links:
                if '"node_gated"' in link.kind_text:
                    try:
                        data = json.loads(link.kind_text)
                    except ValueError:
                        continue
                    as_of = data.get("as_of") if isinstance(data, dict) else None
                    if isinstance(as_of, int) and data.get("type") == "node_gated":
                        wanted.add(as_of)
            if len(links) < self.page:
                return wanted
            after = links[-1].sequence

    def _policy_set(self, digest: str) -> PolicySet | None:
        if digest not in self._policy_sets:
            self._policy_sets[digest] = self.store.get_policy_set(digest)
        return self._policy_sets[digest]

    def _tenant_policy(self, event: Event, gated: NodeGated) -> tuple[bool, PolicySet | None]:
        """The tenant policy set the gate used (by its recorded digest); ``(False, None)``
        when the store does not hold it (reported)."""
        if self.override is not None and self.override[0] is PolicyScope.TENANT:
            return True, self.override[1]
        layers = gated.policies if isinstance(gated.policies, list) else []
        for layer in layers:
            if isinstance(layer, dict) and layer.get("scope") == "tenant":
                digest = layer.get("digest")
                found = self._policy_set(digest) if isinstance(digest, str) else None
                if found is None:
                    self._diverge(
                        event,
                        gated.node_id,
                        f"cannot recompute: the tenant policy set {digest} is not stored",
                    )
                    return False, None
                return True, found
        return True, None

    # -- the walk --

    def _compacted_away(self) -> bool:
        """Whether events at the start of the run were compacted and no archive supplies
        them (docs/semantics.md §10): then no decision of the run is recomputed — the
        removed ones are not there, and every later one folds the run's budget, approvals
        and progress from the whole log — and one divergence says so."""
        first = self.store.read_chain(self.execution_id, after=0, limit=1)
        if not first or first[0].sequence == 1:
            return False
        history = self.store.compactions(self.execution_id)
        removed = first[0].sequence - 1
        gates = len(self._positions_count())
        summary = (
            f"events 1–{removed} were compacted"
            if history and history[-1].through_sequence >= removed
            else f"events 1–{removed} are missing (and no compaction record covers them)"
        )
        self.divergences.append(
            Divergence(
                execution_id=self.execution_id,
                sequence=first[0].sequence,
                node_id=None,
                problem=(
                    f"cannot recompute: {summary}; the decisions recorded in them, and the "
                    f"{gates} recorded after them (which fold the run's budget, approvals "
                    "and progress from the whole log), are not recomputed; give the archive "
                    "(--archive FILE) to replay the whole run"
                ),
            )
        )
        return True

    def _positions_count(self) -> list[int]:
        """The sequences of the retained ``node_gated`` events."""
        found = []
        after = 0
        while True:
            links = self.store.read_chain(self.execution_id, after=after, limit=self.page)
            found += [link.sequence for link in links if '"type":"node_gated"' in link.kind_text]
            if len(links) < self.page:
                return found
            after = links[-1].sequence

    def run(self) -> None:
        if self._compacted_away():
            return
        execution, workflow = self._execution()
        if self.override is not None and self.override[0] is PolicyScope.WORKFLOW:
            workflow = attrs.evolve(workflow, policy=self.override[1])
        positions = self._positions()
        # One fold state for the whole log, each event folded once (folding a chunk at a
        # time onto the previous `Progress` stacks views and re-reads the run's nodes: the
        # cost per decision grew with the run).
        work = RunState(workflow)
        budget = BudgetState()
        approvals: dict[str, ApprovalStatus] = {}
        inputs: dict[int, _Inputs] = {}
        if 0 in positions:
            inputs[0] = _Inputs(content_digest(work.state), budget, {})
        expected: deque[_Expected] = deque()
        # (node, attempt) → budget its run decision saw, until its settlement comes by
        runs: dict[tuple[str, int], BudgetState] = {}
        # node → attempts a recorded decision let run that have not ended yet (several when
        # governed calls of one node run at once), and the attempt each node last settled
        running: dict[str, list[int]] = {}
        settled: dict[str, int] = {}
        # nodes whose lost outcome a person answered `succeeded`: their completion follows
        answered: set[str] = set()
        unfolded: list[Event] = []
        after = 0
        while True:
            try:
                page = self.store.read_events(self.execution_id, after=after, limit=self.page)
            except NotFound:
                raise
            except (StoreError, InvalidInput) as error:
                # A stored event that no longer decodes: nothing after it can be recomputed.
                unreadable = self._first_unreadable(after)
                self.divergences.append(
                    Divergence(
                        execution_id=self.execution_id,
                        sequence=unreadable,
                        node_id=None,
                        problem=f"cannot recompute: the log cannot be read from here on ({error})",
                    )
                )
                return
            for event in page:
                self.events += 1
                kind = event.kind
                matched = self._check(event, expected) if expected else False
                if isinstance(kind, NodeGated):
                    self._noisy.discard(kind.node_id)
                    self._gate(event, kind, execution, workflow, inputs, expected, runs)
                    if kind.outcome == "run":
                        running.setdefault(kind.node_id, []).append(kind.attempt)
                        if kind.rate_limits:
                            self._charging[(kind.node_id, kind.attempt)] = kind
                elif isinstance(kind, GOVERNANCE_KINDS) and not matched:
                    self._unexplained(event, kind)
                elif isinstance(kind, LimitCharged):
                    self._charge(event, kind)
                elif isinstance(kind, UsageRecorded):
                    settled[kind.node_id] = kind.attempt
                    self._spent[(kind.node_id, kind.attempt)] = kind
                    if kind.succeeded and (kind.node_id, kind.attempt) in self._charging:
                        self._owed[(kind.node_id, kind.attempt)] = event
                    seen = runs.pop((kind.node_id, kind.attempt), None)
                    if seen is not None:
                        self._settle(event, kind, workflow, seen, expected)
                elif isinstance(kind, OutcomeUnknown):
                    # The attempt ended with its outcome unknown: no settlement is owed.
                    runs.pop((kind.node_id, kind.attempt), None)
                    if kind.attempt in running.get(kind.node_id, ()):
                        running[kind.node_id].remove(kind.attempt)
                elif isinstance(kind, OutcomeResolved) and kind.resolution == "succeeded":
                    answered.add(kind.node_id)  # the person's answer is the decision
                elif isinstance(kind, NodeCompleted) and kind.node_id in answered:
                    answered.discard(kind.node_id)
                elif isinstance(kind, NodeCompleted):
                    attempts = running.get(kind.node_id, [])
                    ended = settled.get(kind.node_id)
                    if ended in attempts:
                        attempts.remove(ended)
                    elif attempts:
                        attempts.pop()
                    else:
                        self._completed(event, kind, workflow)
                if isinstance(kind, NodeFailed) and kind.attempt in running.get(kind.node_id, ()):
                    running[kind.node_id].remove(kind.attempt)  # that attempt ended
                unfolded.append(event)
                budget = budget_after(budget, (event,))
                if isinstance(kind, NodeGated) and kind.outcome == "hold":
                    self._held_under[kind.node_id] = _tenant_digest(kind)
                if isinstance(kind, ApprovalReceived):
                    self._answered(event, kind, approvals.get(kind.node_id), execution)
                if isinstance(kind, OutcomeUnknown):
                    self._lost[kind.node_id] = kind
                elif isinstance(kind, OutcomeResolved):
                    self._resolved(event, kind, execution)
                if isinstance(
                    kind,
                    ToolApprovalRequired | ApprovalReceived | ApprovalConsumed | ApprovalExpired,
                ):
                    node = kind.node_id
                    approvals[node] = approval_step(approvals.get(node, _NOT_REQUESTED), event)
                if event.sequence in positions:
                    work.apply(unfolded)
                    unfolded.clear()
                    inputs[event.sequence] = _Inputs(
                        content_digest(work.state),
                        budget,
                        dict(approvals),
                        kind if isinstance(kind, AgentToolInvoked) else None,
                    )
            if len(page) < self.page:
                break
            after = page[-1].sequence
        for missing in expected:
            self._missing(missing)
        if self.override is None:
            for (node_id, _attempt), event in self._owed.items():
                self._diverge(
                    event,
                    node_id,
                    "the attempt ran under windowed limits and was never charged "
                    "(no limit_charged after its usage)",
                )

    # -- answers: who answered is proven by the keys the tenant named --

    def _keys(self, *digests: str | None) -> dict[str, tuple[str, ...]]:
        """The approvers' keys of the tenant policy sets named (the one a hold was decided
        under and the one an answer says was in force): a key named by either counts, and
        an approver named by either must sign."""
        keys: dict[str, tuple[str, ...]] = {}
        for digest in dict.fromkeys(d for d in digests if d):
            found = self._policy_set(digest)
            for name, named in (found.keys_by_approver if found is not None else {}).items():
                keys[name] = (*keys.get(name, ()), *named)
        return keys

    def _answered(
        self,
        event: Event,
        kind: ApprovalReceived,
        status: ApprovalStatus | None,
        execution: Execution,
    ) -> None:
        if not isinstance(status, Pending):
            return  # an answer to nothing open changes nothing (the fold ignores it)
        self._expiry(event, kind, status)
        statement = Statement(
            purpose="approval",
            tenant_id=execution.tenant_id,
            execution_id=execution.execution_id,
            node_id=kind.node_id,
            attempt=kind.attempt,
            request_digest=kind.request_digest,
            decision=kind.decision.value,
            user_id=kind.user_id,
            comment=kind.comment,
            decided_at=kind.decided_at or "",
            policy_digest=kind.policy_digest,
        )
        keys = self._keys(self._held_under.get(kind.node_id), kind.policy_digest)
        self._check_signed(event, kind.node_id, statement, kind.key, kind.signature, keys)

    def _expiry(self, event: Event, kind: ApprovalReceived, status: Pending) -> None:
        """An approval's ``expires_at`` is its event's time plus the validity its request
        carries (docs/semantics.md §5.2); a rejection carries none."""
        expected = None
        if kind.decision is ApprovalDecision.APPROVED:
            expected = expiry_of(status.request, event.created_at)
        if kind.expires_at != expected:
            self._diverge(
                event,
                kind.node_id,
                f"the approval by {kind.user_id!r} expires at {_when(kind.expires_at)}; its "
                f"request and its time give {_when(expected)}",
            )

    def _resolved(self, event: Event, kind: OutcomeResolved, execution: Execution) -> None:
        waiting = self._lost.pop(kind.node_id, None)
        if waiting is None:
            self._diverge(event, kind.node_id, "a resolution of an outcome nobody lost")
            return
        statement = Statement(
            purpose="resolution",
            tenant_id=execution.tenant_id,
            execution_id=execution.execution_id,
            node_id=kind.node_id,
            attempt=waiting.attempt,
            request_digest=waiting.idempotency_key,
            decision=kind.resolution,
            user_id=kind.user_id,
            comment=kind.comment,
            decided_at=kind.decided_at or "",
            policy_digest=kind.policy_digest,
        )
        keys = self._keys(kind.policy_digest)
        self._check_signed(event, kind.node_id, statement, kind.key, kind.signature, keys)

    def _check_signed(
        self,
        event: Event,
        node_id: str,
        statement: Statement,
        key: str | None,
        value: str | None,
        keys: dict[str, tuple[str, ...]],
    ) -> None:
        signature = Signature(key=key, value=value) if key and value else None
        refused = check_signed_answer(statement, signature, keys, verify=verify)
        if refused is not None:
            self._diverge(
                event, node_id, f"the {statement.purpose} by {statement.user_id!r}: {refused}"
            )

    def _first_unreadable(self, after: int) -> int:
        """The sequence of the first event after ``after`` that does not decode."""
        while True:
            try:
                page = self.store.read_events(self.execution_id, after=after, limit=1)
            except (StoreError, InvalidInput):
                return after + 1
            if not page:
                return after + 1
            after = page[-1].sequence

    def _unexplained(self, event: Event, kind: EventKind) -> None:
        node = getattr(kind, "node_id", None)
        if self.override is not None or node in self._noisy:
            return
        self._diverge(
            event,
            node,
            f"a recorded {event_type(kind)} that no recomputed decision produces",
            recorded=dump(kind),
        )

    def _missing(self, missing: _Expected) -> None:
        self.divergences.append(
            Divergence(
                execution_id=self.execution_id,
                sequence=missing.sequence,
                node_id=missing.node_id,
                problem=f"{missing.what}: the recomputed event is missing from the log",
                recomputed=dump(missing.kind),
            )
        )

    def _diverge(self, event: Event, node_id: str | None, problem: str, **versions: Any) -> None:
        self.divergences.append(
            Divergence(
                execution_id=self.execution_id,
                sequence=event.sequence,
                node_id=node_id,
                problem=problem,
                **versions,
            )
        )

    def _check(self, event: Event, expected: deque[_Expected]) -> bool:
        """Compare ``event`` with the recomputed event expected at its sequence, if any;
        returns whether one was expected there."""
        while expected and expected[0].sequence < event.sequence:
            self._missing(expected.popleft())
        if not expected or expected[0].sequence != event.sequence:
            return False
        want = expected[0]
        expected.popleft()
        recorded, recomputed = dump(event.kind), dump(want.kind)
        if canonical_text(recorded) != canonical_text(recomputed):
            self._diverge(
                event,
                want.node_id,
                f"{want.what}: the recorded event differs from the recomputed one",
                recorded=recorded,
                recomputed=recomputed,
            )
            # the rest of this decision's events follow from the differing one: not repeated
            self._noisy.add(want.node_id)
            while (
                expected and expected[0].what == want.what and expected[0].node_id == (want.node_id)
            ):
                expected.popleft()
        return True

    def _expect(
        self,
        expected: deque[_Expected],
        first: int,
        kinds: Sequence[EventKind],
        node: str,
        what: str,
    ) -> None:
        expected.extend(
            _Expected(first + offset, kind, node, what) for offset, kind in enumerate(kinds)
        )

    def _gate(
        self,
        event: Event,
        gated: NodeGated,
        execution: Execution,
        workflow: WorkflowDef,
        inputs: Mapping[int, _Inputs],
        expected: deque[_Expected],
        runs: dict[tuple[str, int], BudgetState],
    ) -> None:
        self.gates += 1
        result = self._recompute(event, gated, execution, workflow, inputs)
        recomputed = result.events[0] if result is not None else None
        self.decisions.append(
            _Decision(
                sequence=event.sequence,
                node_id=gated.node_id,
                attempt=gated.attempt,
                recorded=gated,
                recomputed=recomputed if isinstance(recomputed, NodeGated) else None,
            )
        )
        if result is None or self.override is not None:
            return  # what-if compares outcomes only
        self._expect(expected, event.sequence, result.events, gated.node_id, "gate decision")
        self._check(event, expected)
        seen = inputs[gated.as_of] if gated.as_of is not None else None
        if result.outcome is Outcome.RUN and seen is not None:
            runs[(gated.node_id, gated.attempt)] = seen.budget

    def _recompute(
        self,
        event: Event,
        gated: NodeGated,
        execution: Execution,
        workflow: WorkflowDef,
        inputs: Mapping[int, _Inputs],
    ) -> GateResult | None:
        node = workflow.nodes.get(gated.node_id)
        if node is None:
            self._diverge(event, gated.node_id, "a decision for a node not in the definition")
            return None
        as_of, decided_at = gated.as_of, gated.decided_at
        seen = inputs.get(as_of) if as_of is not None and as_of < event.sequence else None
        if seen is None or as_of is None or decided_at is None:
            self._diverge(
                event,
                gated.node_id,
                "cannot recompute: the decision does not say when (decided_at) or from which "
                "earlier log position (as_of) it read its inputs",
            )
            return None
        found, tenant_policy = self._tenant_policy(event, gated)
        if not found:
            return None
        try:
            request = node_gate_request(
                execution,
                workflow,
                node,
                tenant_policy,
                attempt=gated.attempt,
                budget=seen.budget,
                approval=seen.approvals.get(gated.node_id, _NOT_REQUESTED),
                state_digest=seen.state_digest,
                now=decided_at,
                as_of=as_of,
            )
            if seen.invoked is not None and seen.invoked.node_id == gated.node_id:
                request = invocation_request(request, seen.invoked)
            # Windowed limits are charged by every run of the tenant: the usage the decision
            # saw is taken from its record, for the limits the policy says match the node.
            limits = matching_limits(
                tenant_policy.rate_limits if tenant_policy is not None else None, request.context
            )
            if limits:
                usage = usage_from_record(limits, gated.rate_limits)
                request = attrs.evolve(request, rate_limits=usage)
            return gate_node(request)
        except (GateInputError, InvalidInput) as error:
            self._diverge(event, gated.node_id, f"cannot recompute: {error}")
            return None

    def _settle(
        self,
        event: Event,
        recorded: UsageRecorded,
        workflow: WorkflowDef,
        budget: BudgetState,
        expected: deque[_Expected],
    ) -> None:
        if self.override is not None:
            return
        self.settlements += 1
        try:
            settlement = settle_node(
                SettleRequest(
                    node_id=recorded.node_id,
                    attempt=recorded.attempt,
                    budget=budget,
                    limits=workflow.limits,
                    usage=Usage(
                        input_tokens=recorded.input_tokens,
                        output_tokens=recorded.output_tokens,
                        cost_usd=recorded.cost_usd,
                        tool_calls=recorded.tool_calls,
                        iterations=recorded.iterations,
                    ),
                    succeeded=recorded.succeeded,
                )
            )
        except (GateInputError, InvalidInput) as error:
            self._diverge(event, recorded.node_id, f"cannot recompute the settlement: {error}")
            return
        self._expect(expected, event.sequence, settlement.events, recorded.node_id, "settlement")
        self._check(event, expected)

    def _charge(self, event: Event, charged: LimitCharged) -> None:
        """A recorded ``limit_charged`` must be what its attempt's run decision and usage
        imply (`charter.core.limits.expected_charge`)."""
        if self.override is not None:
            return
        key = (charged.node_id, charged.attempt)
        self._owed.pop(key, None)
        gated = self._charging.get(key)
        spent = self._spent.get(key)
        usage = None
        if spent is not None:
            usage = Usage(
                input_tokens=spent.input_tokens,
                output_tokens=spent.output_tokens,
                cost_usd=spent.cost_usd,
            )
        want = None if gated is None else expected_charge(gated, usage, *key)
        if want is None:
            self._diverge(
                event,
                charged.node_id,
                "a windowed-limit charge without a decision to run this attempt under limits",
            )
            return
        recorded, recomputed = dump(charged), dump(want)
        if canonical_text(recorded) != canonical_text(recomputed):
            self._diverge(
                event,
                charged.node_id,
                "limit charge: the recorded event differs from the recomputed one",
                recorded=recorded,
                recomputed=recomputed,
            )

    def _completed(
        self,
        event: Event,
        completed: NodeCompleted,
        workflow: WorkflowDef,
    ) -> None:
        """A node completed without a recorded decision to run it (unless a person answers
        it): a divergence."""
        if self.override is not None:
            return
        node = workflow.nodes.get(completed.node_id)
        if node is None or node.tag in _UNGATED:
            return
        self._diverge(
            event,
            completed.node_id,
            "the node completed without a recorded decision to run it",
        )


def _tenant_digest(gated: NodeGated) -> str | None:
    layers = gated.policies if isinstance(gated.policies, list) else []
    for layer in layers:
        if isinstance(layer, dict) and layer.get("scope") == "tenant":
            digest = layer.get("digest")
            return digest if isinstance(digest, str) else None
    return None


def replay_run(store: Store, execution_id: str, *, page: int = PAGE) -> ReplayReport:
    """Recompute every decision of a run from its log and report each divergence.
    An unknown run is `NotFound`; an unreadable definition is `InvalidInput`."""
    replayer = _Replayer(store, execution_id, page=page)
    replayer.run()
    return ReplayReport(
        execution_id=execution_id,
        events=replayer.events,
        gates=replayer.gates,
        settlements=replayer.settlements,
        divergences=tuple(replayer.divergences),
    )


# ── what-if ────────────────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class Change:
    """A recorded decision that the proposed policy would have decided otherwise."""

    execution_id: str
    sequence: int
    node_id: str
    attempt: int
    before: str  # allow | hold | block
    after: str
    before_reason: str | None
    after_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.execution_id,
            "sequence": self.sequence,
            "node": self.node_id,
            "attempt": self.attempt,
            "before": self.before,
            "after": self.after,
            "before_reason": self.before_reason,
            "after_reason": self.after_reason,
        }


@attrs.frozen(kw_only=True)
class WhatIfReport:
    """Decisions replayed under a proposed policy: how many, which would change, and any
    that could not be recomputed."""

    runs: int
    decisions: int
    changes: tuple[Change, ...]
    unreplayable: tuple[Divergence, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "decisions": self.decisions,
            "changes": [change.to_json() for change in self.changes],
            "unreplayable": [divergence.to_json() for divergence in self.unreplayable],
        }


def what_if(
    store: Store,
    runs: Iterable[str],
    proposed: PolicySet,
    *,
    scope: PolicyScope = PolicyScope.TENANT,
    page: int = PAGE,
) -> WhatIfReport:
    """Decide every recorded gate request of ``runs`` again with the ``scope`` policy set
    (tenant or workflow) replaced by ``proposed``, everything else as recorded, and list
    the decisions whose outcome would change. Each request is decided on its own recorded
    inputs: what would have happened after a changed decision is not simulated."""
    if scope not in (PolicyScope.TENANT, PolicyScope.WORKFLOW):
        raise InvalidInput("scope", "expected tenant or workflow")
    changes: list[Change] = []
    unreplayable: list[Divergence] = []
    decisions = 0
    count = 0
    for execution_id in runs:
        count += 1
        replayer = _Replayer(store, execution_id, override=(scope, proposed), page=page)
        try:
            replayer.run()
        except (NotFound, InvalidInput, StoreError) as error:
            unreplayable.append(
                Divergence(execution_id=execution_id, sequence=0, node_id=None, problem=str(error))
            )
            continue
        unreplayable.extend(replayer.divergences)
        for decision in replayer.decisions:
            if decision.recomputed is None:
                continue
            decisions += 1
            before = OUTCOME_NAMES.get(decision.recorded.outcome, decision.recorded.outcome)
            after = OUTCOME_NAMES.get(decision.recomputed.outcome, decision.recomputed.outcome)
            if before != after:
                changes.append(
                    Change(
                        execution_id=execution_id,
                        sequence=decision.sequence,
                        node_id=decision.node_id,
                        attempt=decision.attempt,
                        before=before,
                        after=after,
                        before_reason=decision.recorded.reason,
                        after_reason=decision.recomputed.reason,
                    )
                )
    return WhatIfReport(
        runs=count, decisions=decisions, changes=tuple(changes), unreplayable=tuple(unreplayable)
    )
