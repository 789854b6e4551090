"""Build the optional compiled envelope (streamkit/_native.py, with mypyc).

Nothing here runs in an ordinary install: ``pip install .`` and
``pip install -e .`` give the pure-Python package and need no compiler.

* ``STREAMKIT_COMPILE=1 pip wheel .`` builds a platform wheel that holds the
  compiled module too (the build installs mypy and setuptools in its own
  environment; it needs a C compiler and the Python headers).
* ``python hatch_build.py`` (what ``make compiled`` runs) compiles the module
  in place, next to streamkit/_native.py, for a development checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "streamkit" / "_native.py"

_SETUP = """
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="streamkit-native",
    ext_modules=mypycify([{source!r}], opt_level="3"),
    script_args=["build_ext", "--build-lib", "lib", "--build-temp", "temp"],
)
"""


def compile_native(destination: Path) -> list[Path]:
    """Compile streamkit/_native.py and copy its extension files into ``destination``.

    The build runs in a temporary folder (so that setuptools never reads this
    project's pyproject.toml); ``destination`` is the folder of the package.
    """
    missing = _missing_toolchain()
    if missing:
        raise RuntimeError(f"the compiled envelope cannot be built here: {missing}")
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="streamkit-native-") as work:
        env = dict(os.environ, MYPYPATH=str(ROOT))
        subprocess.run(
            [sys.executable, "-c", _SETUP.format(source=str(SOURCE))],
            cwd=work,
            env=env,
            check=True,
        )
        built = sorted((Path(work) / "lib" / "streamkit").glob("_native*"))
        if not built:
            raise RuntimeError("mypyc built no extension for streamkit/_native.py")
        copied: list[Path] = []
        for path in built:
            target = destination / path.name
            shutil.copy2(path, target)
            copied.append(target)
    return copied


def _missing_toolchain() -> str | None:
    """What the build lacks (a C compiler, the Python headers), or None."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} is not on PATH)"
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").exists():
        return f"no Python headers ({include}/Python.h; on Debian: apt-get install python3-dev)"
    return None


def _wanted() -> bool:
    return os.environ.get("STREAMKIT_COMPILE", "") not in ("", "0")


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script, outside a build
    pass
else:

    class CompiledEnvelopeHook(BuildHookInterface):  # type: ignore[type-arg]
        """Adds the compiled envelope to a wheel when STREAMKIT_COMPILE=1."""

        PLUGIN_NAME = "custom"

        def dependencies(self) -> list[str]:
            """What the build needs besides hatchling: mypy (mypyc) when compiling."""
            return ["mypy>=1.11", "setuptools"] if _wanted() else []

        def initialize(self, version: str, build_data: dict[str, Any]) -> None:
            """Compile the envelope and add its extension files to the wheel."""
            if self.target_name != "wheel" or version == "editable" or not _wanted():
                return
            out = Path(self.directory) / "native-build"
            for path in compile_native(out):
                build_data["force_include"][str(path)] = f"streamkit/{path.name}"
            build_data["pure_python"] = False
            build_data["infer_tag"] = True


if __name__ == "__main__":
    for path in compile_native(ROOT / "streamkit"):
        print(f"built {path.relative_to(ROOT)}")
