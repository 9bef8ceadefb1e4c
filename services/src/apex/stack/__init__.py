"""apex.stack: every service as a child process on loopback (L4 runs without a deployment)."""
