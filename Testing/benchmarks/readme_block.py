"""Write a benchmark's table into README.md, between the markers ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def write_readme_block(name, text):
    """Replace what stands between the ``name`` markers of README.md with ``text``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    readme = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no {start} ... {end} markers")
    README.write_text(pattern.sub(lambda _m: f"{start}\n{text}\n{end}", readme), encoding="utf-8")


def publish_table(name, text, *, markdown=None, readme=False):
    """Print a benchmark's table; also write it to the file ``markdown`` and, if ``readme``, into README.md."""
    print(text)
    if markdown:
        Path(markdown).write_text(text + "\n", encoding="utf-8")
    if readme:
        write_readme_block(name, text)
