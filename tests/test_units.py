"""One unit convention for sizes: IEC (KiB, MiB, GiB) in the code's messages and tables, the README and the docs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DECIMAL_UNITS = re.compile(r"\b\d*\s*(KB|kB|MB|GB)\b")


def files():
    yield from (ROOT / "src" / "prunekit").rglob("*.py")
    yield from (ROOT / "benchmarks").glob("*.py")
    yield ROOT / "README.md"
    yield from (ROOT / "docs").rglob("*.md")


def test_sizes_use_iec_units_everywhere():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if DECIMAL_UNITS.search(line)
    ]
    assert not found, "use KiB/MiB/GiB (sizes are counted in powers of 1024):\n" + "\n".join(found)
