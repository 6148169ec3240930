"""Play a learned world with the keyboard: `python play.py [world=<name|path>] [key=value ...]`.

`python play.py --help` lists every option; `headless=true policy=random` runs without a window.
"""

import sys

from worldsim.play.app import main

if __name__ == "__main__":
    sys.exit(main())
