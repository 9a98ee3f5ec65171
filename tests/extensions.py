"""The package's optional C extensions: built by the install wherever a C compiler is found."""

from __future__ import annotations

import shutil
import sysconfig

import pytest


def compiler_present() -> bool:
    command = (sysconfig.get_config_var("CC") or "cc").split()
    return bool(command) and shutil.which(command[0]) is not None


def assert_built(module: object, name: str) -> None:
    """A machine with a C compiler must have the extension; one without falls back to the Python rule."""
    if module is None and not compiler_present():
        pytest.skip(f"no C compiler here: {name} is not built and its Python rule answers")
    assert module is not None, f"the extension {name} was not built although a C compiler is present"


def needs(module: object, name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(module is None, reason=f"{name} is not built: its Python rule answers")
