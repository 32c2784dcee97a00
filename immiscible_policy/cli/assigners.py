"""``immiscible-assigners``: list every registered assigner with origin, scope and description.

Listing names needs no import; scope and description come from the class, so each plugin is imported
here (a broken one is shown with its error instead of breaking the listing).
"""

from __future__ import annotations

import argparse
import json
import sys

from immiscible_policy import registry


def rows() -> list[dict]:
    """One row per name; a plugin that fails to import (even with ``SystemExit``) gets its error in one
    line (distribution, entry point, exception) and the others are listed as usual."""
    out = []
    for name, entry in registry.available().items():
        row = {"name": name, "origin": entry.origin, "version": entry.version, "target": entry.target}
        try:
            cls = registry.load(entry)
            row.update(
                scope=cls.scope, description=cls.description or (cls.__doc__ or "").strip().split("\n")[0]
            )
            row["error"] = None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not hide the others
            if isinstance(exc, registry.AssignerError):  # names the distribution, entry point and error
                text = str(exc)
            else:
                origin = f"{entry.origin} {entry.version}, entry point {name} = {entry.target}"
                text = f"{type(exc).__name__}: {exc} [from {origin}]"
            row.update(scope="?", description="", error=" ".join(text.split()))
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="immiscible-assigners", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    w_name = max([4] + [len(r["name"]) for r in table])
    w_origin = max([6] + [len(f"{r['origin']} {r['version']}".strip()) for r in table])
    print(f"{'name':<{w_name}}  {'origin':<{w_origin}}  {'scope':<6}  description")
    for r in table:
        origin = f"{r['origin']} {r['version']}".strip()
        desc = f"ERROR: {r['error']}" if r["error"] else r["description"]
        print(f"{r['name']:<{w_name}}  {origin:<{w_origin}}  {r['scope']:<6}  {desc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
