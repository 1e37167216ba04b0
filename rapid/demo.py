"""`make demo`: the main job on the embedded CPU default (filled in by the trainer issue)."""

import sys


def main() -> int:
    print("rapid demo: the trainer is not implemented yet (see issue 5); nothing to run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
