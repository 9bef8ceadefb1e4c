"""Integration tests of the Apex data layer, apex.data (team: data)."""

# The platform's services these tests reach (apex.topology names; users and their
# context tokens come from auth): at L4 the kit checks, once, that the --target file
# names each of them.
SERVICES = ("data", "auth")
