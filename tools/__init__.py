"""CI helper scripts (run as `python tools/<script>.py`) and their tests."""
