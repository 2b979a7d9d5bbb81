import sys

from pulse_jax.cli import main

sys.exit(main())
