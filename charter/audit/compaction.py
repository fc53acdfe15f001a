"""Compacting finished runs' logs, archiving what is removed, and reading archives back
(docs/semantics.md §10, docs/audit.md §6).

`compact_log` walks the store's runs; for each finished run it finds the cut (the last
event recorded before ``before``, never the run's last event: `charter.core.compaction`),
**verifies the prefix it is about to remove** (a log that does not verify is never
compacted: that would launder the alteration), and — with an archive — appends the removed
events to the archive file exactly as stored (`ChainLink`, one JSON object per line) as it
checks them, in the same single pass (a run whose prefix does not verify has its lines cut
off again), flushes and fsyncs it, and only then asks the store to compact (`Store.compact`, one
transaction: snapshot to the end, delete, record). A crash between the two leaves the
events in the store and in the archive; nothing is lost. The store refuses the compaction
if the event at the cut is no longer the one read, so an archive holds exactly what was
removed.

`read_archive` reads archive files back (strictly: every error names the file, the line
and the field), and `with_archives` gives a read view of a store in which a compacted
run's removed events are served from its archives, so `verify_log` checks the archive
against the compaction record and `replay_run` / `what_if` recompute the whole run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final, cast

import attrs

from charter.adapters.chain import GENESIS, ChainVerifier
from charter.adapters.codec import loads
from charter.adapters.store_support import utc_text
from charter.audit.replay import PAGE, execution_ids
from charter.core.compaction import Compaction, compactable, cut_sequence
from charter.core.errors import Conflict, InvalidInput
from charter.core.events import Event, EventKind
from charter.core.ports import Store
from charter.core.records import ChainLink

__all__ = [
    "ARCHIVE_FORMAT",
    "CompactReport",
    "CompactedRun",
    "SkippedRun",
    "compact_log",
    "parse_before",
    "read_archive",
    "with_archives",
]

#: The first line of every archive file.
ARCHIVE_FORMAT: Final = "charter-archive/1"
_LINK_FIELDS: Final = (
    "execution_id",
    "sequence",
    "event_id",
    "created_at",
    "kind_text",
    "prev_hash",
    "hash",
)


@attrs.frozen(kw_only=True)
class CompactedRun:
    """A run compacted (or, in a dry run, that would be): events ``first``–``through``
    removed, ``bytes`` their stored size (kind text and envelope fields), and the record
    written (``None`` in a dry run)."""

    execution_id: str
    first: int
    through: int
    events: int
    bytes: int
    record: Compaction | None


@attrs.frozen(kw_only=True)
class SkippedRun:
    """A run not compacted, and why."""

    execution_id: str
    reason: str


@attrs.frozen(kw_only=True)
class CompactReport:
    compacted: tuple[CompactedRun, ...]
    skipped: tuple[SkippedRun, ...]
    dry_run: bool
    archive: str | None

    @property
    def events(self) -> int:
        return sum(run.events for run in self.compacted)

    @property
    def bytes(self) -> int:
        return sum(run.bytes for run in self.compacted)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "archive": self.archive,
            "events": self.events,
            "bytes": self.bytes,
            "compacted": [
                {
                    "run": run.execution_id,
                    "first": run.first,
                    "through": run.through,
                    "events": run.events,
                    "bytes": run.bytes,
                    "hash": run.record.hash if run.record is not None else None,
                }
                for run in self.compacted
            ],
            "skipped": [{"run": s.execution_id, "reason": s.reason} for s in self.skipped],
        }


def parse_before(text: str, where: str = "--before") -> int | datetime:
    """``--before``: a sequence (a positive integer) or an ISO 8601 time with a timezone."""
    stripped = text.strip()
    if stripped.isdigit():
        value = int(stripped)
        if value < 1:
            raise InvalidInput(where, f"expected a sequence of at least 1, got {text!r}")
        return value
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise InvalidInput(
            where, f"expected a sequence (an integer) or an ISO 8601 time, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise InvalidInput(where, f"the time {text!r} has no timezone (write it with Z or +HH:MM)")
    return moment


def _link_bytes(link: ChainLink) -> int:
    return (
        len(link.kind_text.encode("utf-8"))
        + len(link.event_id)
        + len(link.created_at)
        + len(link.prev_hash)
        + len(link.hash)
        + 8
    )


def _links(store: Store, execution_id: str, after: int, page: int) -> Iterator[ChainLink]:
    while True:
        links = store.read_chain(execution_id, after=after, limit=page)
        yield from links
        if len(links) < page:
            return
        after = links[-1].sequence


class _Archive:
    """The archive file: created exclusively (never overwritten) when the first event is
    archived. A run's lines are written as its events are checked (`append`), then either
    fsynced before its compaction (`sync`) or, when the run is not compacted after all (its
    log does not verify, or there was nothing to remove), cut off again (`undo`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        try:
            file = self.path.open("xb")
        except FileExistsError:
            raise InvalidInput(
                "--archive", f"{self.path}: already exists (an archive is never overwritten)"
            ) from None
        except OSError as error:
            raise InvalidInput("--archive", f"{self.path}: cannot create it ({error})") from None
        file.write((json.dumps({"format": ARCHIVE_FORMAT}) + "\n").encode("utf-8"))
        _fsync_directory(self.path)
        self._file = file
        return file

    def mark(self) -> int | None:
        """Where the next run's lines start (``None``: the file is not created yet)."""
        return None if self._file is None else self._file.tell()

    def append(self, links: Iterable[ChainLink]) -> None:
        file = self._file
        for link in links:
            if file is None:
                file = self._open()
            line = {name: getattr(link, name) for name in _LINK_FIELDS}
            file.write(
                (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            )

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def undo(self, mark: int | None) -> None:
        """Remove what was appended since ``mark`` (the whole file if it was made since)."""
        if self._file is None:
            return
        if mark is None:
            self._file.close()
            self._file = None
            self.path.unlink(missing_ok=True)
            _fsync_directory(self.path)
            return
        self._file.flush()
        self._file.seek(mark)
        self._file.truncate()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _fsync_directory(path: Path) -> None:
    try:
        descriptor = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
    except OSError:
        return  # (a platform without directory handles)
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def compact_log(
    store: Store,
    *,
    before: int | datetime,
    runs: Iterable[str] | None = None,
    archive: str | Path | None = None,
    dry_run: bool = False,
    page: int = PAGE,
) -> CompactReport:
    """Compact every finished run (or ``runs``) up to ``before`` — a sequence (the events
    numbered lower) or an aware time (the events recorded before it) — archiving what is
    removed to ``archive`` first when given (see the module doc). ``dry_run``: report what
    would be removed, write nothing."""
    if isinstance(before, datetime) and before.tzinfo is None:
        raise InvalidInput("--before", "expected a time with a timezone")
    target = Path(archive) if archive is not None else None
    if target is not None and target.exists():
        raise InvalidInput(
            "--archive", f"{target}: already exists (an archive is never overwritten)"
        )
    sink = _Archive(target) if target is not None and not dry_run else None
    compacted: list[CompactedRun] = []
    skipped: list[SkippedRun] = []
    try:
        for execution_id in execution_ids(store) if runs is None else runs:
            outcome = _compact_run(store, execution_id, before, sink, dry_run, page)
            if isinstance(outcome, CompactedRun):
                compacted.append(outcome)
            else:
                skipped.append(outcome)
    finally:
        if sink is not None:
            sink.close()
    return CompactReport(
        compacted=tuple(compacted),
        skipped=tuple(skipped),
        dry_run=dry_run,
        archive=str(target) if target is not None else None,
    )


def _compact_run(
    store: Store,
    execution_id: str,
    before: int | datetime,
    sink: _Archive | None,
    dry_run: bool,
    page: int,
) -> CompactedRun | SkippedRun:
    execution = store.get_execution(execution_id)
    if execution is None:
        return SkippedRun(execution_id=execution_id, reason="the run does not exist")
    refusal = compactable(execution.status)
    if refusal is not None:
        return SkippedRun(execution_id=execution_id, reason=refusal)
    history = store.compactions(execution_id)
    done = history[-1].through_sequence if history else 0
    start = history[-1].hash if history else GENESIS
    limit = cut_sequence(
        last_sequence=execution.last_sequence,
        compacted_through=done,
        before_sequence=before if isinstance(before, int) else None,
    )
    if limit is None:
        return SkippedRun(execution_id=execution_id, reason="nothing before the cut to remove")
    stamp = utc_text(before) if isinstance(before, datetime) else None
    # One pass: find the cut and verify everything that would be removed, archiving each
    # event as it is checked (with an archive); the archive's lines for this run are cut off
    # again unless the whole prefix verifies.
    verifier = ChainVerifier(execution_id)
    verifier.resume(done, start)
    through, size = done, 0

    def prefix() -> Iterator[ChainLink]:
        nonlocal through, size
        for link in _links(store, execution_id, done, page):
            if link.sequence > limit or (stamp is not None and link.created_at >= stamp):
                return
            verifier.feed((link,))
            through, size = link.sequence, size + _link_bytes(link)
            yield link

    mark = sink.mark() if sink is not None else None
    if sink is not None:
        try:
            sink.append(prefix())
        except BaseException:
            sink.undo(mark)  # a read, check or write that failed: none of this run stays
            raise
    else:
        for _ in prefix():
            pass
    problems = verifier.finish()
    if problems or through <= done:
        if sink is not None:
            sink.undo(mark)
        if problems:
            return SkippedRun(
                execution_id=execution_id,
                reason=f"its log does not verify, so it is not compacted: {problems[0]}",
            )
        return SkippedRun(execution_id=execution_id, reason="nothing before the cut to remove")
    expect = verifier.head
    first = done + 1
    if dry_run:
        return CompactedRun(
            execution_id=execution_id, first=first, through=through,
            events=through - done, bytes=size, record=None,
        )  # fmt: skip
    if sink is not None:
        sink.sync()
    try:
        record = store.compact(execution_id, through=through, expect_hash=expect)
    except Conflict as error:
        return SkippedRun(execution_id=execution_id, reason=str(error))
    return CompactedRun(
        execution_id=execution_id, first=first, through=through,
        events=record.events, bytes=size, record=record,
    )  # fmt: skip


# ── reading archives back ────────────────────────────────────────────────────────────


def read_archive(paths: Sequence[str | Path]) -> dict[str, list[ChainLink]]:
    """The events of one or more archive files, by run, in sequence order. A malformed
    file is `InvalidInput` naming the file, the line and the field; the same event in two
    files must be identical."""
    found: dict[str, dict[int, ChainLink]] = {}
    for path in paths:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeError) as error:
            raise InvalidInput(f"--archive {where}", f"cannot read it ({error})") from None
        lines = text.splitlines()
        if not lines or _json(lines[0], f"{where}:1") != {"format": ARCHIVE_FORMAT}:
            raise InvalidInput(
                f"{where}:1", f'expected the header {{"format": "{ARCHIVE_FORMAT}"}}'
            )
        for number, line in enumerate(lines[1:], start=2):
            link = _link(_json(line, f"{where}:{number}"), f"{where}:{number}")
            run = found.setdefault(link.execution_id, {})
            if run.get(link.sequence, link) != link:
                raise InvalidInput(
                    f"{where}:{number}",
                    f"run {link.execution_id!r} event {link.sequence} differs from the same "
                    "event in another archive line",
                )
            run[link.sequence] = link
    return {run: [links[s] for s in sorted(links)] for run, links in found.items()}


def _json(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except ValueError as error:
        raise InvalidInput(where, f"not JSON ({error})") from None


def _link(data: Any, where: str) -> ChainLink:
    if not isinstance(data, dict) or set(data) != set(_LINK_FIELDS):
        raise InvalidInput(where, f"expected an object with exactly {', '.join(_LINK_FIELDS)}")
    for name in _LINK_FIELDS:
        value = data[name]
        if name == "sequence":
            if type(value) is not int or value < 1:
                raise InvalidInput(f"{where}: {name}", f"expected an integer ≥ 1, got {value!r}")
        elif type(value) is not str:
            raise InvalidInput(f"{where}: {name}", f"expected a string, got {value!r}")
    return ChainLink(**{name: data[name] for name in _LINK_FIELDS})


class _ArchiveView:
    """A read view of a store in which each run's archived events come before its stored
    ones (see `with_archives`); everything else is the store's."""

    def __init__(self, store: Store, archives: Mapping[str, Sequence[ChainLink]]) -> None:
        self._store = store
        self._archives = archives

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def read_chain(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[ChainLink, ...]:
        archived = [link for link in self._archives.get(execution_id, ()) if link.sequence > after]
        chosen = archived if limit is None else archived[:limit]
        if limit is not None and len(chosen) >= limit:
            return tuple(chosen)
        stored_after = max(after, archived[-1].sequence) if archived else after
        rest = None if limit is None else limit - len(chosen)
        stored = self._store.read_chain(execution_id, after=stored_after, limit=rest)
        return (*chosen, *stored)

    def read_events(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[Event, ...]:
        links = self.read_chain(execution_id, after=after, limit=limit)
        archived = {link.sequence for link in self._archives.get(execution_id, ())}
        if not archived & {link.sequence for link in links}:
            return self._store.read_events(execution_id, after=after, limit=limit)
        return tuple(_event(link) for link in links)


def _event(link: ChainLink) -> Event:
    return Event(
        id=link.event_id,
        execution_id=link.execution_id,
        sequence=link.sequence,
        kind=loads(link.kind_text, EventKind),
        created_at=datetime.fromisoformat(link.created_at),
        prev_hash=link.prev_hash,
        hash=link.hash,
    )


def with_archives(store: Store, archives: Mapping[str, Sequence[ChainLink]]) -> Store:
    """``store`` as read with ``archives`` (`read_archive`): a compacted run's removed
    events, where archived, come back in `Store.read_chain` and `Store.read_events`, so
    `verify_log` checks them against the compaction record and replay and what-if see the
    whole run. Writes are not part of the view's purpose (it is for auditing)."""
    return cast(Store, _ArchiveView(store, archives))
