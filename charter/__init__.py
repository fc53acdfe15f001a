"""Charter: the governance engine for AI-agent workflows.

``charter`` is the public facade: it re-exports the pure decision core (`charter.core`) so
``from charter import PolicySet, gate_node`` works. Adapters (storage, file loading, the
codec) live in `charter.adapters`; the command line in `charter.cli`; Hypothesis strategies
for property-testing your own policies in `charter.testing.strategies`.
"""

from __future__ import annotations

from charter.core import *  # noqa: F403 - the facade is exactly the core's public API
from charter.core import __all__ as _core_api

__version__ = "0.1.0"

__all__ = [*_core_api, "__version__"]
