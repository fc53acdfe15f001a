"""The OpenAPI 3.1 document of the ``/v1`` API, served at ``/v1/openapi.json`` and checked
into docs/service-openapi.json (a test keeps the two equal)."""

from __future__ import annotations

from typing import Any

from charter import __version__

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Bad input: the error names the field"),
    "401": _json(_ref("Error"), "No token, or an unknown, revoked or expired one"),
}
_SCOPED = {"403": _json(_ref("Error"), "A tenant filter outside the token's scope")}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _answer(decision: str) -> dict[str, Any]:
    return {
        "summary": f"Answer an open request: {decision}",
        "description": (
            "The answering user is the token's principal. Only a user the request's approver "
            "admits may answer (403 otherwise, nothing recorded). A repeat of the recorded "
            "answer returns it (200, repeated: true); another answer already recorded is 409. "
            "When the tenant names keys for the user, `signature` and `decided_at` are "
            "required: sign the `message` of the statement endpoint."
        ),
        "parameters": [_path("run_id"), _path("node_id")],
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": _ref("AnswerBody")}},
        },
        "responses": {
            "200": _json(_ref("AnswerResult")),
            **_ERRORS,
            "403": _json(_ref("Error"), "Not this request's approver, or a signature required"),
            "404": _json(_ref("Error"), "No such run"),
            "409": _json(_ref("Error"), "Nothing open, or already answered otherwise"),
        },
    }


def openapi_document() -> dict[str, Any]:
    """The document (a fresh dict on every call)."""
    obj: dict[str, Any] = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Charter service",
            "version": __version__,
            "description": (
                "Gate decisions, runs, approvals and lost outcomes of a Charter store. "
                "Every /v1 request "
                "needs `Authorization: Bearer <token>` (charter tokens new), except this "
                "document."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {"type": "string"},
                                "answer": obj,
                            },
                        }
                    },
                },
                "DecisionRequest": {
                    "type": "object",
                    "required": ["node_kind"],
                    "additionalProperties": False,
                    "properties": {
                        "tenant_id": {"type": "string", "default": "default"},
                        "node_id": {"type": "string", "default": "call"},
                        "node_kind": {
                            "type": "string",
                            "description": "tool, model, agent, mcp_tool, … (docs/semantics.md)",
                        },
                        "tool": {"type": ["string", "null"]},
                        "model": {"type": ["string", "null"]},
                        "resolved_model": {"type": ["string", "null"]},
                        "call": {"description": "the call's arguments (any JSON)"},
                        "attempt": {"type": "integer", "minimum": 0, "default": 0},
                        "run_id": {
                            "type": ["string", "null"],
                            "description": (
                                "record the decision in this run (a governed session, made "
                                "by the first decision naming it); node_id, attempt and "
                                "resolved_model are then refused"
                            ),
                        },
                        "tools": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "with run_id: the session's other tools",
                        },
                        "models": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "with run_id: the session's other models",
                        },
                    },
                },
                "Decision": {
                    "type": "object",
                    "required": ["decision"],
                    "properties": {
                        "decision": {"enum": ["run", "hold", "refuse"]},
                        "reason": {"type": ["string", "null"]},
                        "rule": {"type": ["string", "null"]},
                        "scope": {"type": ["string", "null"]},
                        "pattern": {"type": ["string", "null"]},
                        "approver": {"type": ["string", "null"]},
                        "request_digest": {"type": ["string", "null"]},
                        "policy_digest": {"type": ["string", "null"]},
                        "run_id": {"type": "string", "description": "with run_id"},
                        "node_id": {"type": "string", "description": "with run_id"},
                        "sequence": {
                            "type": "integer",
                            "description": "with run_id: the node_gated event's sequence",
                        },
                        "events": {
                            "type": "array",
                            "items": _ref("Event"),
                            "description": "with run_id: the events recorded",
                        },
                    },
                },
                "Resolution": {
                    "type": "object",
                    "properties": {
                        name: {}
                        for name in (
                            "run_id",
                            "tenant_id",
                            "workflow_id",
                            "node_id",
                            "tool",
                            "arguments",
                            "attempt",
                            "idempotency_key",
                            "reason",
                            "sequence",
                            "lost_at",
                            "resolver",
                            "resolutions",
                            "signature_required",
                        )
                    },
                },
                "ResolutionBody": {
                    "type": "object",
                    "required": ["resolution"],
                    "additionalProperties": False,
                    "properties": {
                        "resolution": {"enum": ["succeeded", "failed", "retry"]},
                        "output": {"description": "with succeeded: the node's output (JSON)"},
                        "reason": {
                            "type": ["string", "null"],
                            "description": "with failed: why",
                        },
                        "comment": {"type": ["string", "null"]},
                        "signature": {
                            "type": "object",
                            "required": ["key", "value"],
                            "properties": {
                                "key": {"type": "string", "description": "ed25519:<base64>"},
                                "value": {"type": "string", "description": "base64"},
                            },
                        },
                        "decided_at": {"type": "string"},
                    },
                },
                "Run": {
                    "type": "object",
                    "properties": {
                        "run_id": {"type": "string"},
                        "tenant_id": {"type": "string"},
                        "workflow_id": {"type": "string"},
                        "workflow_version": {"type": "string"},
                        "status": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "last_sequence": {"type": "integer"},
                    },
                },
                "RunDetail": {
                    "allOf": [
                        _ref("Run"),
                        {
                            "type": "object",
                            "properties": {
                                "run": {
                                    "type": "object",
                                    "description": "the run record, with blocked_on",
                                },
                                "steps": {"type": "array", "items": obj},
                                "budget": obj,
                            },
                        },
                    ]
                },
                "Event": {
                    "type": "object",
                    "properties": {
                        "sequence": {"type": "integer"},
                        "event_id": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "type": {"type": "string"},
                        "kind": obj,
                        "hash": {"type": "string"},
                    },
                },
                "Approval": {
                    "type": "object",
                    "properties": {
                        name: {}
                        for name in (
                            "run_id",
                            "tenant_id",
                            "workflow_id",
                            "node_id",
                            "node_kind",
                            "tool",
                            "model",
                            "approver",
                            "attempt",
                            "request_digest",
                            "requested_at",
                            "sequence",
                            "arguments",
                            "call",
                            "reasons",
                            "rule",
                            "scope",
                            "pattern",
                            "reason",
                            "budget",
                            "signature_required",
                        )
                    },
                },
                "AnswerBody": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "comment": {"type": ["string", "null"]},
                        "signature": {
                            "type": "object",
                            "required": ["key", "value"],
                            "properties": {
                                "key": {"type": "string", "description": "ed25519:<base64>"},
                                "value": {"type": "string", "description": "base64"},
                            },
                        },
                        "decided_at": {"type": "string"},
                    },
                },
                "AnswerResult": {
                    "type": "object",
                    "properties": {"answer": obj, "repeated": {"type": "boolean"}},
                },
                "Statement": {
                    "type": "object",
                    "properties": {
                        "statement": obj,
                        "message": {
                            "type": "string",
                            "description": "the canonical JSON to sign (UTF-8 bytes)",
                        },
                        "decided_at": {"type": "string"},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/decisions": {
                "post": {
                    "summary": "Decide one call with the tenant's stored policy",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("DecisionRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("Decision")),
                        **_ERRORS,
                        "403": _json(_ref("Error"), "The token is scoped to another tenant"),
                        "404": _json(_ref("Error"), "No such tenant (or run, with run_id)"),
                        "409": _json(
                            _ref("Error"),
                            "run_id names a run that is not this tenant's governed session "
                            "of the tool",
                        ),
                    },
                }
            },
            "/v1/runs": {
                "get": {
                    "summary": "List runs, a page at a time",
                    "parameters": [
                        _query("status", "pending, running, completed, failed, …"),
                        _query("tenant", "only this tenant's runs"),
                        _query("limit", "1–500 (default 100)", {"type": "integer"}),
                        _query("cursor", "next_cursor of the previous page"),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "runs": {"type": "array", "items": _ref("Run")},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            }
                        ),
                        **_ERRORS,
                        **_SCOPED,
                    },
                }
            },
            "/v1/runs/{run_id}": {
                "get": {
                    "summary": "One run: its record, steps, blocked_on and budget",
                    "parameters": [_path("run_id")],
                    "responses": {
                        "200": _json(_ref("RunDetail")),
                        **_ERRORS,
                        "404": _json(_ref("Error"), "No such run"),
                    },
                }
            },
            "/v1/runs/{run_id}/events": {
                "get": {
                    "summary": "A run's events after a sequence, a page at a time",
                    "parameters": [
                        _path("run_id"),
                        _query("after", "sequence to start after (default 0)", {"type": "integer"}),
                        _query("limit", "1–500 (default 100)", {"type": "integer"}),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "events": {"type": "array", "items": _ref("Event")},
                                    "next_after": {"type": ["integer", "null"]},
                                },
                            }
                        ),
                        **_ERRORS,
                        "404": _json(_ref("Error"), "No such run"),
                    },
                }
            },
            "/v1/approvals": {
                "get": {
                    "summary": "Open requests for approval",
                    "parameters": [
                        _query("approver", "only requests this user may answer"),
                        _query("tenant", "only this tenant's requests"),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "approvals": {"type": "array", "items": _ref("Approval")}
                                },
                            }
                        ),
                        **_ERRORS,
                        **_SCOPED,
                    },
                }
            },
            "/v1/approvals/{run_id}/{node_id}/statement": {
                "get": {
                    "summary": "The statement a signed answer signs",
                    "parameters": [
                        _path("run_id"),
                        _path("node_id"),
                        _query("decision", "approved or rejected"),
                        _query("comment", "the answer's comment"),
                    ],
                    "responses": {
                        "200": _json(_ref("Statement")),
                        **_ERRORS,
                        "404": _json(_ref("Error"), "No such run"),
                        "409": _json(_ref("Error"), "Nothing open"),
                    },
                }
            },
            "/v1/approvals/{run_id}/{node_id}/approve": {"post": _answer("approve")},
            "/v1/approvals/{run_id}/{node_id}/reject": {"post": _answer("reject")},
            "/v1/resolutions": {
                "get": {
                    "summary": "Lost outcomes waiting for a person",
                    "parameters": [
                        _query("resolver", "only those this user may resolve"),
                        _query("tenant", "only this tenant's"),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "resolutions": {
                                        "type": "array",
                                        "items": _ref("Resolution"),
                                    }
                                },
                            }
                        ),
                        **_ERRORS,
                        **_SCOPED,
                    },
                }
            },
            "/v1/resolutions/{run_id}/{node_id}/statement": {
                "get": {
                    "summary": "The statement a signed resolution signs",
                    "parameters": [
                        _path("run_id"),
                        _path("node_id"),
                        _query("resolution", "succeeded, failed or retry"),
                        _query("comment", "the answer's comment"),
                    ],
                    "responses": {
                        "200": _json(_ref("Statement")),
                        **_ERRORS,
                        "404": _json(_ref("Error"), "No such run"),
                        "409": _json(_ref("Error"), "Nothing waits"),
                    },
                }
            },
            "/v1/resolutions/{run_id}/{node_id}": {
                "post": {
                    "summary": "Say what became of a lost outcome",
                    "description": (
                        "The answering user is the token's principal. Only a user the "
                        "tenant's resolver admits may answer (403 otherwise, nothing "
                        "recorded). A repeat of the recorded answer returns it (200, repeated: "
                        "true); another answer already recorded is 409. When the tenant names "
                        "keys for the user, `signature` and `decided_at` are required."
                    ),
                    "parameters": [_path("run_id"), _path("node_id")],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ResolutionBody")}},
                    },
                    "responses": {
                        "200": _json(_ref("AnswerResult")),
                        **_ERRORS,
                        "403": _json(
                            _ref("Error"), "Not the tenant's resolver, or a signature required"
                        ),
                        "404": _json(_ref("Error"), "No such run"),
                        "409": _json(_ref("Error"), "Nothing waits, or already resolved"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The process is up (no token needed)",
                    "security": [],
                    "responses": {"200": _json(obj)},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "The database answers (no token needed)",
                    "security": [],
                    "responses": {"200": _json(obj), "503": _json(obj, "Not ready")},
                }
            },
        },
    }
