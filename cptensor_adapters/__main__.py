"""``python -m cptensor_adapters``: the ``cptensor`` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
