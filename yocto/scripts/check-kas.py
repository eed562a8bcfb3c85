#!/usr/bin/env python3
"""Offline check of the kas files: yocto/scripts/check-kas.py yocto/kas/*/*.yml

`kas dump` clones every repository before it prints anything, so it needs the
network. This loads each file the way kas does (kas's own IncludeHandler:
every file and every include validated against kas's JSON schema, includes
merged), validates the merged result against the schema again, and checks
what the usrbd build relies on: a machine, the usrbd-poky distro, the usrbd-image target, and
every remote layer pinned to a full commit id on a named branch, and the
layers of the file's series (its directory: scarthgap/, wrynose/) on that
series' branches, so a machine file cannot mix series.

Needs `pip install kas` (the tool itself is Python, hence this check is too).
Exit status 1 if any file fails.
"""

import argparse
import os
import re
import sys

from jsonschema.validators import validator_for
from kas import CONFIGSCHEMA
from kas.context import create_global_context
from kas.includehandler import IncludeHandler

COMMIT = re.compile(r"^[0-9a-f]{40}$")

# The remote repositories of each supported series and their branches.
SERIES = {
    "scarthgap": {"poky": "scarthgap", "meta-raspberrypi": "scarthgap"},
    "wrynose": {
        "bitbake": "2.18",
        "openembedded-core": "wrynose",
        "meta-yocto": "wrynose",
        "meta-raspberrypi": "wrynose",
    },
}


def check(path):
    config, missing = IncludeHandler([path], use_lock=False).get_config()
    problems = [f"repo {name!r} is not defined" for name in missing]
    validator = validator_for(CONFIGSCHEMA)(CONFIGSCHEMA)
    problems += [f"merged config: {e.message}" for e in validator.iter_errors(config)]
    for key, want in (("distro", "usrbd-poky"), ("target", "usrbd-image")):
        if config.get(key) != want:
            problems.append(f"{key} is {config.get(key)!r}, expected {want!r}")
    if not config.get("machine"):
        problems.append("no machine")
    series = os.path.basename(os.path.dirname(os.path.abspath(path)))
    want = SERIES.get(series)
    remote = {n: r or {} for n, r in (config.get("repos") or {}).items() if "url" in (r or {})}
    if want is None:
        problems.append(f"not in a series directory ({', '.join(SERIES)})")
    else:
        if set(remote) != set(want):
            problems.append(f"repos {sorted(remote)}, {series} needs {sorted(want)}")
        for name, branch in want.items():
            got = str(remote.get(name, {}).get("branch", ""))
            if name in remote and got != branch:
                problems.append(f"repo {name!r} is on branch {got!r}, {series} is {branch!r}")
    for name, repo in (config.get("repos") or {}).items():
        repo = repo or {}
        if "url" not in repo:
            continue  # this repository itself
        if not COMMIT.match(str(repo.get("commit", ""))):
            problems.append(f"repo {name!r} is not pinned to a full commit id")
        if not repo.get("branch"):
            problems.append(f"repo {name!r} names no branch for its commit")
    return config, problems


def main():
    paths = sys.argv[1:]
    if not paths:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    create_global_context(argparse.Namespace(no_color=True))
    failed = 0
    for path in paths:
        try:
            config, problems = check(path)
        except Exception as e:  # kas reports schema errors by raising
            config, problems = {}, [f"{type(e).__name__}: {e}"]
        if problems:
            failed += 1
            for p in problems:
                print(f"{path}: FAIL: {p}")
        else:
            repos = ", ".join(
                f"{n}@{(r or {}).get('commit', 'local')[:12]}"
                for n, r in sorted(config["repos"].items())
            )
            print(f"{path}: ok (machine {config['machine']}; {repos})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
