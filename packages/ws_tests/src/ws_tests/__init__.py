"""Integration tests of the Apex WebSocket gateway (team: realtime)."""

# The platform's services these tests reach (apex.topology names; users sign in through
# auth): at L4 the kit checks, once, that the --target file names each of them.
SERVICES = ("gateway", "auth")
