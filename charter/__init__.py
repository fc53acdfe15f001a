"""Charter: the governance engine for AI-agent workflows."""
