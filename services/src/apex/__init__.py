"""The Apex platform: one subpackage per service (auth, ...) plus data, common and stack."""
