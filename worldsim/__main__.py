"""`python -m worldsim CMD [key=value ...]`, the same as the `worldsim` command; also what
`torchrun -m worldsim train ...` runs in each process."""

import sys

from worldsim.cli import main

if __name__ == "__main__":
    sys.exit(main())
