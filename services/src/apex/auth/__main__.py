"""``python -m apex.auth [--host H] [--port P] [--fd N]``."""

import sys

from apex.auth import create_app, load_settings
from apex.common.serve import main

if __name__ == "__main__":
    sys.exit(main("auth", create_app, load_settings=load_settings))
