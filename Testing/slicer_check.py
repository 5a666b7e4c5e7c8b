"""The real-code check: the Slicer modules' tests on Slicer's own Python layer of every supported release.

Usage::

    python Testing/slicer_check.py --slicer-source PATH [--tags v5.6.2 v5.8.1 v5.10.0 v5.12.3]

PATH is a git repository of Slicer (a clone of github.com/Slicer/Slicer with its
release tags, bare or not). For each tag, the files the modules run through
(``Base/Python/slicer``: util, i18n, ScriptedLoadableModule, parameterNodeWrapper,
packaging; ``Modules/Scripted/SampleData``; ``Schemas``) are extracted into a
temporary folder, never into this repository, and the module tests run in a
fresh Python process with ``SLICER_PYTHON_SOURCE`` pointing there (see
Testing/slicer_support.py). The extension's catalog entry is also checked
against that release's catalog schema, where the release has one.

Exit status 0 when every tag passes.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUPPORTED_TAGS = ("v5.6.2", "v5.8.1", "v5.10.0", "v5.12.3")
EXTRACTED = ("Base/Python/slicer", "Modules/Scripted/SampleData", "Schemas")
TESTS = ("Testing/test_slicer_modules.py", "Testing/test_slicer_reconstruction.py", "Testing/test_slicer_roi.py",
         "Testing/test_slicer_swi.py", "Testing/test_slicer_atlas.py", "Testing/test_slicer_threads.py")
CATALOG_ENTRY = REPO / "Resources" / "ExtensionsIndex" / "SlicerQSM.json"


def _get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slicer-source", required=True, help="git repository of Slicer with its release tags")
    parser.add_argument("--tags", nargs="+", default=list(SUPPORTED_TAGS), help="release tags to check")
    return parser


def extract(source, tag, destination):
    """The tag's Python layer into ``destination`` (git archive of the paths that exist at that tag)."""
    listed = subprocess.run(["git", "-C", source, "ls-tree", "--name-only", tag, "--", *EXTRACTED],
                            capture_output=True, text=True)
    if listed.returncode != 0:
        raise SystemExit(f"slicer-check: {source} has no tag {tag} ({listed.stderr.strip()}); "
                         "fetch Slicer's tags (git fetch --tags) or give another --tags")
    paths = listed.stdout.split()
    archive = subprocess.run(["git", "-C", source, "archive", tag, *paths], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)


def check_catalog_entry(tree):
    """Problems of the catalog entry against the release's catalog schema ([] when none or no schema)."""
    schemas = sorted((Path(tree) / "Schemas").glob("slicer-extension-catalog-entry-schema-*.json"))
    if not schemas:
        return []
    entry = json.loads(CATALOG_ENTRY.read_text())
    known = {schema.name for schema in schemas}
    schema_name = entry["$schema"].rsplit("/", 1)[1].rstrip("#")
    if schema_name not in known:
        return [f"$schema {schema_name} is not one of this release's schemas {sorted(known)}"]
    schema = json.loads((Path(tree) / "Schemas" / schema_name).read_text())
    problems = [f"missing required '{key}'" for key in schema["required"] if key not in entry]
    problems += [f"unknown property '{key}'" for key in entry if key not in schema["properties"]]
    for key, value in entry.items():
        spec = schema["properties"].get(key, {})
        expected = {"string": str, "integer": int, "array": list, "boolean": bool}.get(spec.get("type"))
        if expected is not None and not isinstance(value, expected):
            problems.append(f"'{key}' should be of type {spec['type']}")
        if "enum" in spec and value not in spec["enum"]:
            problems.append(f"'{key}' must be one of {spec['enum']}")
        if "minimum" in spec and value < spec["minimum"] or "maximum" in spec and value > spec["maximum"]:
            problems.append(f"'{key}' is out of range")
    return problems


def main(argv=None):
    args = _get_parser().parse_args(argv)
    source = os.path.abspath(args.slicer_source)
    results = []
    with tempfile.TemporaryDirectory(prefix="slicer-check-") as work:
        for tag in args.tags:
            tree = Path(work) / tag
            tree.mkdir()
            extract(source, tag, tree)
            problems = check_catalog_entry(tree)
            for problem in problems:
                print(f"slicer-check {tag}: catalog entry {CATALOG_ENTRY.name}: {problem}")
            start = time.time()
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                                 cwd=REPO, env={**os.environ, "SLICER_PYTHON_SOURCE": str(tree)},
                                 capture_output=True, text=True)
            summary = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
            if run.returncode != 0:
                print(run.stdout[-20000:], run.stderr[-5000:])
            results.append((tag, run.returncode == 0 and not problems, summary, time.time() - start))
    print("\nSlicer real-code check (Slicer's own Python layer, slicer-core MRML, fake Qt)")
    for tag, ok, summary, seconds in results:
        print(f"  {tag:8s} {'PASS' if ok else 'FAIL'}  {summary}  ({seconds:.0f} s)")
    return 0 if all(ok for _tag, ok, _summary, _seconds in results) else 1


if __name__ == "__main__":
    sys.exit(main())
