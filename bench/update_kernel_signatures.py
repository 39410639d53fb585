#!/usr/bin/env python
"""Regenerate ``gpuperf/cuda/signatures.json``: the compiled signature of every catalogued kernel.

Run from the repository root after changing a kernel's parameters or adding a model::

    python bench/update_kernel_signatures.py          # rewrite the table
    python bench/update_kernel_signatures.py --check  # exit 1 when the table is stale

Types come from the host (g++) build of each instantiation, names from the ``__global__``
declaration (:mod:`gpuperf.cuda.signature`); ``tests/test_cuda_compile.py`` runs the check and
compares the types with nvcc's demangled symbols.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TABLE = REPO / "gpuperf" / "cuda" / "signatures.json"


def render() -> str:
    import gpuperf.fit  # noqa: F401  (registers the fit kernels with the catalog)
    from gpuperf.cuda.signature import catalog_signatures, render_table

    return render_table(catalog_signatures())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="Only check; exit 1 when stale.")
    args = ap.parse_args(argv)
    text = render()
    current = TABLE.read_text(encoding="utf-8") if TABLE.is_file() else ""
    if args.check:
        if text != current:
            print(f"{TABLE} is stale: run python bench/update_kernel_signatures.py")
            return 1
        return 0
    if text != current:
        TABLE.write_text(text, encoding="utf-8")
        print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
