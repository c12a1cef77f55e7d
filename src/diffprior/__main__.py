"""`python -m diffprior ...`, as the `diffprior` command (and what `torchrun -m diffprior` runs)."""

import sys

from .cli import main

sys.exit(main())
