"""Draw every picture of the site again: runs each script of ``docs/scripts`` (or those named) in a fresh process.

python docs/scripts/make_images.py                   # all of them
python docs/scripts/make_images.py xrai idgi         # some of them
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts(names: list[str]) -> list[Path]:
    """The picture scripts: every module here but the shared ones (``_*.py``) and this one, or those named."""
    every = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != Path(__file__).name)
    if not names:
        return every
    known = {p.stem: p for p in every}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"no picture script named {', '.join(unknown)}; there are {', '.join(sorted(known))}")
    return [known[name] for name in names]


def main(names: list[str]) -> int:
    failed = []
    for script in scripts(names):
        if subprocess.run([sys.executable, str(script)], cwd=HERE).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
