"""``python -m hiercam``: the command line (see ``hiercam.cli``)."""

from hiercam.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
