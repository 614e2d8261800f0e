"""``python -m cptensor``: the CP commands (fit, sweep); see :mod:`cptensor.cli`."""

from .cli import main

raise SystemExit(main())
