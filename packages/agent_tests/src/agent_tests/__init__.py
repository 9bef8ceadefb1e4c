"""Integration tests of Apex agent orchestration, apex.agents (team: agents)."""

# The platform's services these tests reach (apex.topology names; users and their
# context tokens come from auth; their costs reach data, which purges an L4 run's
# tenants): at L4 the kit checks, once, that the --target file
# names each of them.
SERVICES = ("agents", "auth", "data")
