"""Charter around code that is not a Charter workflow (docs/integrations.md).

* `charter.integrations.govern` — `govern` / `governed` / `Governor`: every call of a
  Python callable (sync or async) gated, recorded, executed and settled in a Charter run,
  replayable like the worker's; `Refused` and `Held` say why a call did not run.
* `charter.adapters.otel` — OpenTelemetry spans for gate decisions and tool executions
  (GenAI semantic conventions plus ``charter.*`` attributes) and a decision counter; a no-op
  without ``opentelemetry-api``.
"""
