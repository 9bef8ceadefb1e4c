"""apex.stack: every service of apex.topology as a child process on loopback (L4 without a
deployment). Run it as ``python -m apex.stack``; :mod:`apex.stack.plan` holds what it reads
from the topology."""
