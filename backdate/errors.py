"""Errors that map onto backdate's exit codes (PRODUCT.md, "The command line").

1: invalid input or refused (nothing written); 2: usage; 3: target unreachable or failed.
"""

from __future__ import annotations


class BackdateError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class InputError(BackdateError):
    """Bad input: names the file and line so the user can fix it. Exit 1, nothing written."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.problem = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(f"{where}{message}")


class RefusedError(BackdateError):
    """The request is valid input but unsafe or impossible for this target. Exit 1."""

    exit_code = 1


class UsageError(BackdateError):
    """Wrong command-line use. Exit 2."""

    exit_code = 2


class TargetError(BackdateError):
    """The target cannot be reached or failed while working. Exit 3."""

    exit_code = 3


class VerificationError(TargetError):
    """The target does not hold what the plan wrote (read-back after commit)."""


class MissingPackageError(BackdateError):
    """An optional Python package is not installed: one line naming the `pip install` that
    fixes it, raised before anything is written. Exit 1."""

    exit_code = 1


# What to install for each package backdate imports only when asked for.
INSTALL = {
    "matplotlib": "pip install 'backdate[chart]'",
    "pymysql": "pip install PyMySQL",
    "psycopg": "pip install 'psycopg[binary]'",
}


def require(module: str, what: str) -> None:
    """Import `module` now (so a missing one fails before any write), else MissingPackageError."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as err:
        raise missing_package(err, what) from None


def missing_package(err: ImportError, what: str | None = None) -> MissingPackageError:
    """The one-line error for an ImportError of a package that is not installed."""
    name = (err.name or "").split(".")[0] or str(err)
    fix = INSTALL.get(name, f"pip install {name}")
    need = f"{what} needs" if what else "backdate needs"
    return MissingPackageError(f"{need} the Python package {name}, which is not installed: {fix}")
