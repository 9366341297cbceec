#!/usr/bin/env python
"""The teacher zoo: public self-supervised checkpoints by name, for MODEL.TEACHER.WEIGHTS zoo:NAME.

    python tools/zoo.py list                 # names, architectures, layouts, checksums, what is cached
    python tools/zoo.py fetch mocov2_r50_800ep [NAME ...]

Files are downloaded once into torch's cache folder (TORCH_HOME/hub/checkpoints), resumably, and
verified against the publisher's checksum (or the one recorded at the first download). Without
network access, `fetch` names the URL and the path where the file can be placed by hand.
Installed as `seed-zoo`.
"""
import os
import sys

from seed_core import zoo
from tools import cli


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


def _main(argv) -> int:
    p = cli.ArgumentParser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the known names")
    fetch = sub.add_parser("fetch", help="download and verify checkpoints (if not cached) and print their paths")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    cli.setup_logging("WARNING")
    if args.command == "list":
        print(listing())
        return 0
    entries = [zoo.get_entry(name) for name in args.names]  # every name checked before any download
    for entry in entries:
        with cli.DownloadBar(entry.name) as bar:
            print(zoo.fetch(entry.name, progress=bar))
    return 0


def listing() -> str:
    rows = [("name", "arch (MODEL.TEACHER.ARCH)", "layout", "checksum", "cached", "what")]
    for e in zoo.CATALOGUE.values():
        cached = "yes" if os.path.exists(zoo.cache_path(e.name)) else "-"
        rows.append((e.name, e.arch, e.format, e.checksum or "recorded at first download", cached, e.what))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    return "\n".join(lines) + f"\n\ncache folder: {zoo.cache_dir()} (follows TORCH_HOME)"


if __name__ == "__main__":
    sys.exit(main())
