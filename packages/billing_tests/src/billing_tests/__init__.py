"""Integration tests of Apex billing, apex.billing (team: revenue)."""

# The platform's services these tests reach (apex.topology names; users and their
# context tokens come from auth): at L4 the kit checks, once, that the --target file
# names each of them.
SERVICES = ("billing", "auth")
