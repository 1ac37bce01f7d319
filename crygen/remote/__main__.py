"""``python -m crygen.remote profile-doc``: the crygen section of a machine profile, as its
schema documents it (the machine and resources sections are dpdispatcher's, documented by
dpdispatcher from its own schema)."""

from __future__ import annotations

import sys

from crygen.remote.profiles import profile_doc


def main(argv: list[str]) -> int:
    if argv != ["profile-doc"]:
        print("usage: python -m crygen.remote profile-doc", file=sys.stderr)
        return 2
    print(profile_doc())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
