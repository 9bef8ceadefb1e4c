"""``python -m apex.auth [--host H] [--port P] [--fd N]``."""

import sys

from apex.auth.app import create_app
from apex.common.serve import main

if __name__ == "__main__":
    sys.exit(main("auth", create_app))
