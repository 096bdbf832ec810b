"""Build hook: ship the repository's ``catalog/`` inside the wheel as ``melplan/catalog``.

Everything else is declared in pyproject.toml.  The catalog stays at the repository root
(``catalog/<dataset>/<family>.json`` plus ``weights/``) so that training writes where the docs say;
at build time it is copied into the package, where ``melplan.core.catalog.default_catalog_dir`` finds
it from any working directory.  A source checkout (or an editable install) reads ``catalog/`` in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("*.json", "*.pt", "*.md")


class BuildPyWithCatalog(build_py):
    def run(self) -> None:
        super().run()
        src = ROOT / "catalog"
        if not src.is_dir() or self.editable_mode:
            return
        dst = Path(self.build_lib) / "melplan" / "catalog"
        for path in sorted(src.rglob("*")):
            if path.is_file() and any(path.match(p) for p in SHIPPED):
                target = dst / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


setup(cmdclass={"build_py": BuildPyWithCatalog})
