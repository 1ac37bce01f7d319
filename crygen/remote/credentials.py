"""Secrets: the credentials file, the lookup that fills a profile's ``${NAME}`` placeholders,
and the redactor that masks every secret value read in logs and messages."""

from __future__ import annotations

import logging
import os
import re

from crygen.fileio import CrygenError
from crygen.remote import PROJECT
from crygen.settings import SECRET_NAME, credentials_file

NAME = re.compile(r"[A-Z_][A-Z0-9_]*")  # an environment (and make) variable's name


def read_credentials() -> dict[str, str]:
    """``NAME=value`` lines of the credentials file, which must be private (mode 0600)."""
    path = credentials_file()
    if not path.is_file():
        return {}
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CrygenError(path, f"mode {mode:o}: a credentials file must be readable by you only (chmod 600)")
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip().removeprefix("export ").strip()
        if not sep or not NAME.fullmatch(name):
            raise CrygenError(path, f"line {number}: expected NAME=value")  # never echo a value
        values[name] = value.strip().strip("'\"")
    return values


class Redactor(logging.Filter):
    """Replaces every secret value crygen has read in log records and messages."""

    def __init__(self) -> None:
        super().__init__()
        self.values: set[str] = set()

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self.values.add(value)

    def __call__(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self(record.getMessage()), None
        return True


class Lookup:
    """Values for placeholders: the environment, then the credentials file; CRYGEN_PROJECT is
    this project, CRYGEN_SCRATCH the local profile's job folder (remote/scratch). Every secret
    it reads is registered with its redactor."""

    def __init__(self, redact: Redactor, credentials: dict[str, str], secrets: dict[str, str],
                 builtins: dict[str, str]) -> None:
        self.redact = redact
        self.credentials = credentials
        self.secrets = secrets  # taken out of the environment
        self.builtins = builtins

    @classmethod
    def from_environment(cls, redact: Redactor) -> "Lookup":
        """Reads the credentials file; a secret found in the environment is taken out of it
        (a local job's processes inherit this one's environment) and kept here."""
        credentials = read_credentials()
        builtins = {"CRYGEN_PROJECT": str(PROJECT),
                    "CRYGEN_SCRATCH": os.environ.get("CRYGEN_SCRATCH", str(PROJECT / "remote" / "scratch"))}
        secrets = {name: os.environ.pop(name) for name in [n for n in os.environ if SECRET_NAME.search(n)]}
        for value in secrets.values():
            redact.add(value)
        return cls(redact, credentials, secrets, builtins)

    def __call__(self, name: str) -> str | None:
        if SECRET_NAME.search(name):
            value = self.secrets.get(name) or self.credentials.get(name)
            self.redact.add(value)
            return value
        return self.builtins.get(name) or os.environ.get(name) or self.credentials.get(name)
