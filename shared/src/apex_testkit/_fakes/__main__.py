"""`python -m apex_testkit._fakes NAME --fd N [--extra-fd M]`: serve one fake (L3)."""

import sys

from apex_testkit._fakes import server_class
from apex_testkit._fakes._server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], server_class))
