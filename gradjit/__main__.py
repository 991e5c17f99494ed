"""``python -m gradjit``: the gradjit command line (see gradjit.runtime.cli)."""

from gradjit.runtime.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
