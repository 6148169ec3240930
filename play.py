"""Play a learned world with the keyboard: `python play.py [world=<name|path>] [key=value ...]`.

The same as `worldsim play ...`; `python play.py --help` lists every option, and
`headless=true policy=random` runs without a window.
"""

import sys

from worldsim.cli import main

if __name__ == "__main__":
    sys.exit(main(["play", *sys.argv[1:]]))
