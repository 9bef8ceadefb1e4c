"""Apex auth tests: API keys, JWT tokens and Redis sessions at levels L2, L3 and L4."""

# The platform's services these tests reach (apex.topology names): at L4 the kit checks,
# once, that the --target file names each of them.
SERVICES = ("auth",)
