"""The approvers' page: server-rendered HTML, no build step, usable on a phone.

Sign in with a token (a form that sets an HttpOnly, SameSite=Strict cookie holding it);
the pending approvals the signed-in user may answer, each with the workflow, node, tool,
model, the call's arguments exactly as they will run, the rule and scope that asked, the
budget spent and the run's timeline; approve or reject with a comment (a CSRF token in
each form); the lost outcomes the user may resolve (it happened, it did not, run it
again); the runs, each with its timeline and its workflow drawn with node states. The
pending list is refreshed by polling a fragment (``/ui/pending``) every few seconds.

Everything shown is escaped (`html.escape`): arguments, comments and names are attacker-
controlled. The Content-Security-Policy allows scripts and styles from this server only.
"""

from __future__ import annotations

import functools
import html
import json
import secrets
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from charter.core.answers import RESOLUTIONS
from charter.core.approvals import approver_allows
from charter.core.errors import InvalidInput
from charter.core.events import ApprovalDecision, Event, JsonValue
from charter.core.records import ExecutionStatus
from charter.core.runs import StepStatus, run_steps
from charter.service.answers import (
    answer_approval,
    keys_required,
    may_answer_record,
    tenant_groups,
)
from charter.service.context import COOKIE, Service
from charter.service.resolutions import (
    answer_resolution,
    lost_outcomes,
    resolution_json,
    resolver_of,
)
from charter.service.resolutions import cli_command as resolution_command
from charter.service.tokens import Principal
from charter.service.views import approval_json, workflow_of

__all__ = ["SECURITY_HEADERS", "routes"]

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_CSS: Final = """
*{box-sizing:border-box}body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;
background:#f5f6f8}header{background:#1f2a44;color:#fff;padding:.6rem 1rem;display:flex;
flex-wrap:wrap;gap:.8rem;align-items:center}header a{color:#cfe0ff}header .who{margin-left:auto}
main{max-width:60rem;margin:0 auto;padding:1rem}.card{background:#fff;border:1px solid #d8dce3;
border-radius:8px;padding:1rem;margin:0 0 1rem}h1{font-size:1.3rem}
h2{font-size:1.1rem;margin:0 0 .5rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;margin:.5rem 0}
dt{color:#5a6270}dd{margin:0;overflow-wrap:anywhere}pre{background:#0f172a;color:#e2e8f0;
padding:.6rem;border-radius:6px;overflow:auto;white-space:pre-wrap;overflow-wrap:anywhere}
textarea,input[type=text],input[type=password]{width:100%;padding:.5rem;font:inherit;
border:1px solid #b8bfca;border-radius:6px}button{font:inherit;padding:.55rem 1.1rem;border:0;
border-radius:6px;cursor:pointer;margin:.4rem .4rem 0 0}.approve{background:#15803d;color:#fff}
.reject{background:#b91c1c;color:#fff}.plain{background:#e5e7eb}.note{padding:.6rem;
border-radius:6px;background:#fef9c3}.ok{background:#dcfce7}.err{background:#fee2e2}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.35rem;border-bottom:1px
solid #e5e7eb;vertical-align:top}.muted{color:#5a6270}code{overflow-wrap:anywhere}
.s-completed{fill:#bbf7d0}.s-failed,.s-timed_out{fill:#fecaca}.s-waiting{fill:#fde68a}
.s-running{fill:#bfdbfe}.s-skipped{fill:#e5e7eb}.s-none{fill:#fff}svg text{font:12px sans-serif}
.graph{overflow:auto;background:#fff}
"""

_JS: Final = """
(function () {
  var list = document.getElementById('pending');
  if (!list) { return; }
  var every = parseInt(list.getAttribute('data-poll-ms') || '5000', 10);
  function busy() {
    var a = document.activeElement;
    return a && (a.tagName === 'TEXTAREA' || a.tagName === 'INPUT') && list.contains(a);
  }
  function refresh() {
    if (busy()) { return; }
    fetch('/ui/pending', {credentials: 'same-origin', headers: {'Accept': 'text/html'}})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (t) {
        if (t !== null && !busy() && list.getAttribute('data-html') !== t) {
          list.innerHTML = t; list.setAttribute('data-html', t);
        }
      })
      .catch(function () {});
  }
  setInterval(refresh, every);
})();
"""


def h(value: object) -> str:
    """``value`` as HTML text (quotes escaped too: safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _page(title: str, body: str, principal: Principal | None = None, status: int = 200) -> Response:
    nav = ""
    if principal is not None:
        nav = (
            '<a href="/">Approvals</a> <a href="/runs">Runs</a>'
            f'<span class="who">signed in as <b>{h(principal.user_id)}</b></span>'
            '<form method="post" action="/signout"><button class="plain">Sign out</button></form>'
        )
    text = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{h(title)} · Charter</title><link rel="stylesheet" href="/static/page.css">'
        "</head><body><header><b>Charter</b> "
        f"{nav}</header><main>{body}</main>"
        '<script src="/static/page.js"></script></body></html>'
    )
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def _json_text(value: JsonValue) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


# ── sign in ────────────────────────────────────────────────────────────────────────────


def _signin_form(message: str = "") -> str:
    note = f'<p class="note err">{h(message)}</p>' if message else ""
    return (
        '<div class="card"><h1>Sign in</h1>'
        "<p>Paste the token you were given (<code>charter tokens new --user YOU</code>).</p>"
        f'{note}<form method="post" action="/signin">'
        '<label for="token">Token</label>'
        '<input id="token" name="token" type="password" autocomplete="off" required>'
        '<button class="approve" type="submit">Sign in</button></form></div>'
    )


async def signin(request: Request) -> Response:
    service = _service(request)
    form = await request.form()
    text = str(form.get("token") or "").strip()
    principal = await service.principal_of(text)
    if principal is None:
        return _page(
            "Sign in", _signin_form("That token is unknown, revoked or expired."), None, 401
        )
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE,
        text,
        httponly=True,
        samesite="strict",
        secure=service.secure_cookies,
        path="/",
    )
    return response


async def signout(request: Request) -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# ── approvals ──────────────────────────────────────────────────────────────────────────


def _timeline(events: Sequence[Event], run_id: str) -> str:
    rows = "".join(
        f"<tr><td>{step.position}</td><td>{h(step.step_name)}</td>"
        f"<td>{h(step.status.value)}</td><td>{h(step.gate_approved_by or '')}</td>"
        f'<td class="muted">{h(step.step_error or step.gate_prompt or "")}</td></tr>'
        for step in run_steps(run_id, events)
    )
    return (
        "<table><tr><th>#</th><th>node</th><th>status</th><th>by</th><th>note</th></tr>"
        f"{rows}</table>"
    )


def _approval_card(
    service: Service, principal: Principal, item: dict[str, Any], events: Sequence[Event], csrf: str
) -> str:
    run, node = str(item["run_id"]), str(item["node_id"])
    anchor = f"approval-{run}-{node}"
    budget = item.get("budget") or {}
    spent = (
        f"{budget.get('total_input_tokens', 0)} in / {budget.get('total_output_tokens', 0)} out "
        f"tokens, ${budget.get('total_cost_usd', 0)}, {budget.get('tool_call_count', 0)} tool calls"
        if isinstance(budget, dict)
        else ""
    )
    rule = " ".join(
        str(part)
        for part in (item.get("scope"), item.get("rule"), item.get("pattern"))
        if part is not None
    )
    if item.get("signature_required"):
        command = cli_command_for(item, principal.user_id)
        answer = (
            '<p class="note">This tenant requires a signed answer from your key: a token '
            "alone cannot answer it. Run:</p>"
            f'<pre class="command">{h(command)}</pre>'
            '<p class="muted">(or POST a signature over the statement from '
            f"<code>/v1/approvals/{h(quote(run))}/{h(quote(node))}/statement</code>)</p>"
        )
    else:
        action = f"/ui/approvals/{quote(run, safe='')}/{quote(node, safe='')}"
        answer = (
            f'<form method="post" action="{h(action)}">'
            f'<input type="hidden" name="csrf" value="{h(csrf)}">'
            f'<label for="c-{h(anchor)}">Comment</label>'
            f'<textarea id="c-{h(anchor)}" name="comment" rows="2"></textarea>'
            '<button class="approve" name="decision" value="approved">Approve</button>'
            '<button class="reject" name="decision" value="rejected">Reject</button></form>'
        )
    return (
        f'<section class="card approval" id="{h(anchor)}" data-run="{h(run)}" '
        f'data-node="{h(node)}"><h2>{h(item.get("tool"))} in {h(item.get("workflow_id"))}</h2>'
        "<dl>"
        f'<dt>run</dt><dd><a href="/runs/{h(quote(run, safe=""))}">{h(run)}</a></dd>'
        f"<dt>node</dt><dd>{h(node)} ({h(item.get('node_kind'))}, attempt "
        f"{h(item.get('attempt'))})</dd>"
        f"<dt>tool</dt><dd>{h(item.get('tool'))}</dd>"
        f"<dt>model</dt><dd>{h(item.get('model') or '—')}</dd>"
        f"<dt>approver</dt><dd>{h(item.get('approver'))}</dd>"
        f"<dt>asked by</dt><dd>{h(rule or '—')}</dd>"
        f"<dt>why</dt><dd>{h(item.get('reason') or '; '.join(map(str, item['reasons'])))}</dd>"
        f"<dt>budget spent</dt><dd>{h(spent)}</dd>"
        f"<dt>requested</dt><dd>{h(item.get('requested_at'))}</dd>"
        "</dl><h3>Arguments, exactly as they will run</h3>"
        f'<pre class="arguments">{h(_json_text(item.get("arguments")))}</pre>'
        f"<details><summary>Timeline</summary>{_timeline(events, run)}</details>"
        f"{answer}</section>"
    )


def cli_command_for(item: dict[str, Any], user_id: str) -> str:
    return f"charter approve {item['run_id']} {item['node_id']} --user {user_id} --key FILE"


def _pending_html(service: Service, principal: Principal, csrf: str) -> str:
    store = service.store
    cards = []
    for record in store.pending_approvals(tenant_id=principal.tenant_id):
        if not may_answer_record(store, record, principal.user_id):
            continue
        events = store.read_events(record.execution_id)
        needed = keys_required(store, record.tenant_id, principal.user_id)
        item = approval_json(store, record, events=events, keys_needed=needed)
        cards.append(_approval_card(service, principal, item, events, csrf))
    for execution, event, lost_events in lost_outcomes(store, principal.tenant_id):
        resolver = resolver_of(store, execution.tenant_id)
        if not approver_allows(
            resolver, principal.user_id, tenant_groups(store, execution.tenant_id)
        ):
            continue
        needed = keys_required(store, execution.tenant_id, principal.user_id)
        item = resolution_json(store, execution, event, lost_events, keys_needed=needed)
        cards.append(_lost_card(principal, item, lost_events, csrf))
    if not cards:
        return '<p class="card muted" id="none">Nothing is waiting for you.</p>'
    return "".join(cards)


def _lost_card(
    principal: Principal, item: dict[str, Any], events: Sequence[Event], csrf: str
) -> str:
    """A lost outcome waiting for the signed-in resolver: what may or may not have happened,
    and the three answers."""
    run, node = str(item["run_id"]), str(item["node_id"])
    anchor = f"lost-{run}-{node}"
    if item.get("signature_required"):
        command = resolution_command(run, node, principal.user_id)
        answer = (
            '<p class="note">This tenant requires a signed answer from your key: a token '
            "alone cannot answer it. Run:</p>"
            f'<pre class="command">{h(command)}</pre>'
            '<p class="muted">(or POST a signature over the statement from '
            f"<code>/v1/resolutions/{h(quote(run))}/{h(quote(node))}/statement</code>)</p>"
        )
    else:
        action = f"/ui/resolutions/{quote(run, safe='')}/{quote(node, safe='')}"
        answer = (
            f'<form method="post" action="{h(action)}">'
            f'<input type="hidden" name="csrf" value="{h(csrf)}">'
            f'<label for="o-{h(anchor)}">Output, if it happened (JSON, optional)</label>'
            f'<textarea id="o-{h(anchor)}" name="output" rows="2"></textarea>'
            f'<label for="r-{h(anchor)}">Reason, if it did not happen</label>'
            f'<input id="r-{h(anchor)}" name="reason" type="text">'
            f'<label for="c-{h(anchor)}">Comment</label>'
            f'<textarea id="c-{h(anchor)}" name="comment" rows="2"></textarea>'
            '<button class="approve" name="resolution" value="succeeded">It happened</button>'
            '<button class="reject" name="resolution" value="failed">It did not happen</button>'
            '<button class="plain" name="resolution" value="retry">Run it again</button></form>'
        )
    return (
        f'<section class="card lost" id="{h(anchor)}" data-run="{h(run)}" '
        f'data-node="{h(node)}"><h2>Lost outcome: {h(item.get("tool"))} in '
        f"{h(item.get('workflow_id'))}</h2><dl>"
        f'<dt>run</dt><dd><a href="/runs/{h(quote(run, safe=""))}">{h(run)}</a></dd>'
        f"<dt>node</dt><dd>{h(node)} (attempt {h(item.get('attempt'))})</dd>"
        f"<dt>tool</dt><dd>{h(item.get('tool'))}</dd>"
        f"<dt>resolver</dt><dd>{h(item.get('resolver'))}</dd>"
        f"<dt>why unknown</dt><dd>{h(item.get('reason'))}</dd>"
        f"<dt>idempotency key</dt><dd><code>{h(item.get('idempotency_key'))}</code></dd>"
        f"<dt>lost</dt><dd>{h(item.get('lost_at'))}</dd>"
        "</dl><h3>Arguments of the call that may have happened</h3>"
        f'<pre class="arguments">{h(_json_text(item.get("arguments")))}</pre>'
        f"<details><summary>Timeline</summary>{_timeline(events, run)}</details>"
        f"{answer}</section>"
    )


async def home(request: Request) -> Response:
    service = _service(request)
    session = await service.session(request)
    if session is None:
        return _page("Sign in", _signin_form())
    principal, csrf = session
    message = request.query_params.get("m")
    kind = "ok" if request.query_params.get("ok") == "1" else "err"
    note = f'<p class="note {kind}" id="message">{h(message)}</p>' if message else ""
    pending = await run_in_threadpool(_pending_html, service, principal, csrf)
    poll = int(service.poll_secs * 1000)
    body = (
        f"<h1>Waiting for {h(principal.user_id)}</h1>{note}"
        f'<div id="pending" data-poll-ms="{poll}">{pending}</div>'
    )
    return _page("Approvals", body, principal)


async def pending_fragment(request: Request) -> Response:
    service = _service(request)
    session = await service.session(request)
    if session is None:
        return HTMLResponse("", status_code=401, headers=SECURITY_HEADERS)
    principal, csrf = session
    text = await run_in_threadpool(_pending_html, service, principal, csrf)
    return HTMLResponse(text, headers=SECURITY_HEADERS)


async def answer(request: Request) -> Response:
    service = _service(request)
    session = await service.session(request)
    if session is None:
        return RedirectResponse("/", status_code=303)
    principal, csrf = session
    form = await request.form()
    if not secrets.compare_digest(str(form.get("csrf") or ""), csrf):
        return _page(
            "Refused", '<p class="note err">Bad or missing CSRF token.</p>', principal, 403
        )
    decision_text = str(form.get("decision") or "")
    if decision_text not in ("approved", "rejected"):
        return _page(
            "Refused", '<p class="note err">decision: approve or reject.</p>', principal, 400
        )
    comment = str(form.get("comment") or "").strip() or None
    run_id, node_id = request.path_params["run_id"], request.path_params["node_id"]
    try:
        result = await run_in_threadpool(
            answer_approval,
            service.store,
            principal,
            run_id,
            node_id,
            decision=ApprovalDecision(decision_text),
            comment=comment,
            remote=service.remote(request),
        )
    except InvalidInput as error:
        result = None
        message, ok = str(error), "0"
    if result is not None:
        if result.status == 200:
            message, ok = f"Recorded: {node_id} in {run_id} {decision_text}.", "1"
        else:
            message, ok = result.error or "refused", "0"
    return RedirectResponse(f"/?m={quote(message)}&ok={ok}", status_code=303)


async def resolve(request: Request) -> Response:
    service = _service(request)
    session = await service.session(request)
    if session is None:
        return RedirectResponse("/", status_code=303)
    principal, csrf = session
    form = await request.form()
    if not secrets.compare_digest(str(form.get("csrf") or ""), csrf):
        return _page(
            "Refused", '<p class="note err">Bad or missing CSRF token.</p>', principal, 403
        )
    resolution = str(form.get("resolution") or "")
    if resolution not in RESOLUTIONS:
        return _page(
            "Refused",
            '<p class="note err">resolution: it happened, it did not, or run it again.</p>',
            principal,
            400,
        )
    comment = str(form.get("comment") or "").strip() or None
    reason = str(form.get("reason") or "").strip() or None
    output_text = str(form.get("output") or "").strip()
    run_id, node_id = request.path_params["run_id"], request.path_params["node_id"]
    result = None
    try:
        output = json.loads(output_text) if output_text and resolution == "succeeded" else None
        result = await run_in_threadpool(
            functools.partial(
                answer_resolution,
                service.store,
                principal,
                run_id,
                node_id,
                resolution=resolution,
                output=output,
                reason=reason if resolution == "failed" else None,
                comment=comment,
                remote=service.remote(request),
            )
        )
    except ValueError as error:
        message, ok = f"output: not JSON ({error})", "0"
    except InvalidInput as error:
        message, ok = str(error), "0"
    if result is not None:
        if result.status == 200:
            message, ok = f"Recorded: the outcome of {node_id} in {run_id}: {resolution}.", "1"
        else:
            message, ok = result.error or "refused", "0"
    return RedirectResponse(f"/?m={quote(message)}&ok={ok}", status_code=303)


# ── runs ───────────────────────────────────────────────────────────────────────────────


async def runs_page(request: Request) -> Response:
    service = _service(request)
    session = await service.session(request)
    if session is None:
        return RedirectResponse("/", status_code=303)
    principal, _ = session
    status_text = request.query_params.get("status") or None
    try:
        status = ExecutionStatus(status_text) if status_text else None
    except ValueError:
        status = None
    cursor = request.query_params.get("cursor") or None

    def work() -> str:
        page = service.store.list_executions(
            tenant_id=principal.tenant_id, status=status, limit=50, cursor=cursor
        )
        rows = "".join(
            f'<tr><td><a href="/runs/{h(quote(e.execution_id, safe=""))}">'
            f"{h(e.execution_id)}</a></td><td>{h(e.workflow_id)}</td><td>{h(e.tenant_id)}</td>"
            f'<td>{h(e.status.value)}</td><td class="muted">{h(e.updated_at)}</td></tr>'
            for e in page.items
        )
        more = (
            f'<p><a href="/runs?cursor={h(quote(page.next_cursor))}">more</a></p>'
            if page.next_cursor
            else ""
        )
        return (
            '<h1>Runs</h1><div class="card"><table><tr><th>run</th><th>workflow</th>'
            f"<th>tenant</th><th>status</th><th>updated</th></tr>{rows}</table>{more}</div>"
        )

    return _page("Runs", await run_in_threadpool(work), principal)


def graph_svg(workflow: Any, states: dict[str, str]) -> str:
    """The workflow's nodes in layers from the start node, edges as lines, each node
    filled by the state of its latest step."""
    layer: dict[str, int] = {workflow.start_node: 0}
    frontier = [workflow.start_node]
    while frontier:  # breadth-first: a node's layer is its shortest distance from the start
        following = []
        for node in frontier:
            for edge in workflow.edges:
                if (
                    edge.source == node
                    and edge.target not in layer
                    and edge.target in workflow.nodes
                ):
                    layer[edge.target] = layer[node] + 1
                    following.append(edge.target)
        frontier = following
    depth = max(layer.values(), default=0)
    for node in workflow.nodes:
        if node not in layer:
            depth += 1
            layer[node] = depth
    rows: dict[int, list[str]] = {}
    for node in workflow.nodes:
        rows.setdefault(layer[node], []).append(node)
    width, height, gap_x, gap_y = 150, 36, 30, 34
    position: dict[str, tuple[int, int]] = {}
    for index, names in rows.items():
        for column, node in enumerate(names):
            position[node] = (10 + column * (width + gap_x), 10 + index * (height + gap_y))
    total_w = max(x for x, _ in position.values()) + width + 10
    total_h = max(y for _, y in position.values()) + height + 10
    lines = []
    for edge in workflow.edges:
        if edge.source in position and edge.target in position:
            x1, y1 = position[edge.source]
            x2, y2 = position[edge.target]
            lines.append(
                f'<line x1="{x1 + width // 2}" y1="{y1 + height}" x2="{x2 + width // 2}" '
                f'y2="{y2}" stroke="#64748b" stroke-width="1.5" marker-end="url(#arrow)"/>'
            )
    boxes = []
    for node, (x, y) in position.items():
        state = states.get(node, "none")
        label = node if len(node) <= 20 else node[:19] + "…"
        boxes.append(
            f'<g class="node" data-node="{h(node)}" data-state="{h(state)}">'
            f'<rect x="{x}" y="{y}" width="{width}" height="{height}" rx="6" '
            f'class="s-{h(state)}" stroke="#334155"/>'
            f'<text x="{x + 8}" y="{y + 15}">{h(label)}</text>'
            f'<text x="{x + 8}" y="{y + 30}" fill="#475569">{h(state)}</text></g>'
        )
    return (
        f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{total_w}" '
        f'height="{total_h}" viewBox="0 0 {total_w} {total_h}" role="img" '
        'aria-label="workflow graph"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" '
        'refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#64748b"/></marker></defs>'
        f"{''.join(lines)}{''.join(boxes)}</svg>"
    )


async def run_page(request: Request) -> Response:
    service = _service(request)
    session = await service.session(request)
    if session is None:
        return RedirectResponse("/", status_code=303)
    principal, _ = session
    run_id = request.path_params["run_id"]

    def work() -> str | None:
        store = service.store
        execution = store.get_execution(run_id)
        if execution is None or not principal.sees(execution.tenant_id):
            return None
        events = store.read_events(run_id)
        steps = run_steps(run_id, events)
        states = {step.step_name: step.status.value for step in steps}
        workflow = workflow_of(store, execution)
        drawing = graph_svg(workflow, states) if workflow is not None else ""
        waiting = any(s.status is StepStatus.WAITING for s in steps)
        return (
            f'<h1>Run {h(run_id)}</h1><div class="card"><dl>'
            f"<dt>workflow</dt><dd>{h(execution.workflow_id)} v{h(execution.workflow_version)}</dd>"
            f"<dt>tenant</dt><dd>{h(execution.tenant_id)}</dd>"
            f'<dt>status</dt><dd id="run-status">{h(execution.status.value)}'
            f"{' (waiting for a person)' if waiting else ''}</dd></dl></div>"
            f'<div class="card"><h2>Workflow</h2><div class="graph">{drawing}</div></div>'
            f'<div class="card"><h2>Timeline</h2>{_timeline(events, run_id)}</div>'
        )

    body = await run_in_threadpool(work)
    if body is None:
        return _page("Not found", f'<p class="note err">No run {h(run_id)}.</p>', principal, 404)
    return _page(f"Run {run_id}", body, principal)


async def css(request: Request) -> Response:
    return Response(_CSS, media_type="text/css", headers={"Cache-Control": "max-age=300"})


async def js(request: Request) -> Response:
    return Response(_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=300"})


def routes() -> list[Route]:
    return [
        Route("/", home, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/ui/pending", pending_fragment, methods=["GET"]),
        Route("/ui/approvals/{run_id}/{node_id}", answer, methods=["POST"]),
        Route("/ui/resolutions/{run_id}/{node_id}", resolve, methods=["POST"]),
        Route("/runs", runs_page, methods=["GET"]),
        Route("/runs/{run_id}", run_page, methods=["GET"]),
        Route("/static/page.css", css, methods=["GET"]),
        Route("/static/page.js", js, methods=["GET"]),
    ]
