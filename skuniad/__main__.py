"""``python -m skuniad``: the same program as the ``skuniad`` command."""

from skuniad.cli import main

if __name__ == "__main__":
    main()
