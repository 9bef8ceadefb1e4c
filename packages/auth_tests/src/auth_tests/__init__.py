"""Apex auth tests: API keys, JWT tokens and Redis sessions at levels L2, L3 and L4."""
