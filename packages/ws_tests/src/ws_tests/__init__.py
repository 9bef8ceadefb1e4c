"""Integration tests of the Apex WebSocket gateway (team: realtime)."""
