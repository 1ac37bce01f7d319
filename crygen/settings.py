"""The pipeline's settings (make variables), each declared once: its type, the values it may
take, what it means and which settings stamps it joins.

Each setting's default is here too, and only here: the Makefile defines its variables from
them (``defaults``), the stages' click options take them (:func:`crygen.cli.setting_option`)
and `make help` shows them; tests/test_settings.py checks the Makefile holds no other.

The Makefile runs this module when it is read, before any stage runs: a bad value stops
make with one line naming the variable; a secret given on make's command line is refused
before anything is written. The same declarations write the settings stamps (see
:func:`stamp_text`), the normalised settings summarize records (``json``) and `make help`'s
list of variables.

Standard library only, run with ``python -S``: the check must work on a fresh clone, before
.venv exists (the Makefile uses .venv's python when there is one, else $(PYTHON)). dargs
(dpdispatcher's argument checker) would need .venv, and checks nested dicts, not text values
that make hands over.

Commands (values are given as NAME=VALUE arguments; the Makefile quotes each for the shell):
  names                        the declared names
  paths                        the variables naming an input file or folder (path_settings)
  defaults                     the Makefile's defaults, one word each: NAME?=VALUE, or NAME alone
                               where the Makefile derives it (it `$(eval)`s the first kind)
  check [--validate] [--given NAMES] [--stamp FILE ...] NAME=VALUE...
                               `ok` and the stale stamp files, or `error <one line>`
  stamp --write FILE NAME=VALUE...        write one stamp (FILE is named after its stage)
  json --write PATH NAME=VALUE...         write the normalised settings (strict JSON)
  help NAME=VALUE...                      the variables, their meanings, values and defaults
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# Names of the variables crygen treats as credentials (remote profiles' ${NAME} placeholders).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|APP_KEY|TICKET|TOKEN|PASSPHRASE")
SEED_MAX = 2**32 - 1  # numpy's seed range


def credentials_file() -> Path:
    return Path(os.environ.get("CRYGEN_CREDENTIALS", "~/.config/crygen/credentials")).expanduser()


class Bad(ValueError):
    """A value a setting does not take; the message completes ``NAME=value: ``."""


# ---------------------------------------------------------------- value types
def integer(low: int, high: int | None = None, why: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        span = (f"from {low} to {high}" if high is not None else f"at least {low}") + (f" ({why})" if why else "")
        if not re.fullmatch(r"[+-]?[0-9]+", text.strip()):
            raise Bad(f"must be a whole number {span}")
        value = int(text)
        if value < low or (high is not None and value > high):
            raise Bad(f"must be {span}")
        return value

    return parse


def number(low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        above = f"above {low:g}" if low_open else f"at least {low:g}"
        span = f"{above} and at most {high:g}" if high is not None else above
        try:
            value = float(text)
        except ValueError:
            raise Bad(f"must be a number {span}") from None
        if not math.isfinite(value):
            raise Bad(f"must be a finite number {span}")
        if value < low or (low_open and value == low) or (high is not None and value > high):
            raise Bad(f"must be {span}")
        return value

    return parse


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Empty means "the stage's default" (recorded as null)."""
    return lambda text: None if text.strip() == "" else parse(text)


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise Bad(f"must be one of {', '.join(options)}")
        return text

    return parse


def flag(text: str) -> bool:
    value = text.strip()  # as the Makefile's $(filter 1 yes true, ...) reads it: lower case
    if value in ("1", "yes", "true"):
        return True
    if value in ("0", "no", "false"):
        return False
    raise Bad("must be 1 or 0 (yes/no, true/false)")


def device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", text):
        raise Bad("must be auto, cpu, cuda or cuda:N")
    return text


def share(text: str) -> tuple[int, int]:
    """``k/n``: the k-th of n shares of a job spread over n runs."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise Bad("must be k/n with 1 <= k <= n, such as 1/1 or 2/4")
    return int(match[1]), int(match[2])


def path(required: bool = True) -> Callable[[str], str]:
    """A file or folder, or a name (chgnet, default, a published MatterGen model)."""
    def parse(text: str) -> str:
        if text == "":
            if required:
                raise Bad("must name a file or folder")
            return text
        if re.search(r"\s", text):
            # make splits its prerequisites and file lists at whitespace: such a path cannot be
            # tracked, and would be read as several
            raise Bad("make cannot track a path with a space in it; rename it, or give a link "
                      f"without one (ln -s '{text}' {re.sub(r'[^A-Za-z0-9._-]+', '_', Path(text).name)})")
        return text

    return parse


def text(value: str) -> str:
    if "\n" in value:
        raise Bad("must be one line")
    return value


# ---------------------------------------------------------------- the declarations
# The one place of each setting's default: the Makefile defines its variables from these
# (`defaults`, with ?=, so the command line and the environment still win), `make help` shows
# them and the stages' click options take them (crygen.cli.setting_option). A default is text
# as make holds it, without whitespace or make's special characters. None: the Makefile
# derives it from its other variables (DATA from DEMO_DATA, RESULTS from OUT), written there.
DERIVED = None


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: str | None  # make's text; DERIVED: a Makefile expression
    meaning: str
    stamps: tuple[str, ...] = ()  # the stages whose settings stamp it joins
    only_with: str | None = None  # joins them only when this setting is set (non-empty, not 0)
    content: bool = False  # a path: the stamp also holds its files' list, sizes and times

    @property
    def value(self) -> Any:
        """The default, typed as a stage's option takes it."""
        if self.default is None:
            raise ValueError(f"{self.name}'s default is the Makefile's (derived from its other variables)")
        return self.parse(self.default)


PIPE = ("prepare", "finetune", "validate", "generate", "sample")
SETTINGS = (
    Setting("DATA", path(), DERIVED,
            "your crystals: a CSV (material_id, cif, property columns), a CIF folder or an extxyz file",
            ("prepare",), content=True),
    Setting("BASE_MODEL", path(), "data/base_model", "the model to fine-tune: a MatterGen model dir or a published name",
            ("finetune",), content=True),
    Setting("OUT", path(), "runs/default", "the run folder"),
    Setting("EPOCHS", integer(1), "1", "fine-tuning epochs", ("finetune",)),
    Setting("NUM_GEN", integer(1), "4",
            "samples to draw (fewer may be written: generation.json's samples block counts each)", ("generate", "sample")),
    Setting("SEED", integer(0, SEED_MAX, "numpy's seed range"), "42",
            "seed of the split, fine-tuning, validation noise and sampling", PIPE),
    Setting("DEVICE", device, "auto", "auto, cpu, cuda or cuda:N", ("finetune", "validate", "generate", "sample")),
    Setting("VAL_FRACTION", number(0.0, 0.9), "0.1", "share of DATA held out for validation", ("prepare",)),
    Setting("MAX_ATOMS", integer(1, 500), "20", "largest structure kept from DATA (atoms)", ("prepare",)),
    Setting("BATCH_SIZE", integer(1), "32", "fine-tuning batch size", ("finetune",)),
    Setting("GEN_BATCH", integer(0), "0", "generation block size: samples drawn together, with one seed (0: chosen from NUM_GEN and memory; "
            "fix it to extend a generation with a larger NUM_GEN)",
            ("generate", "sample")),
    Setting("DRAWS", integer(1), "4", "noise draws per validation structure", ("validate",)),
    # Spreading generation and relaxation: the crystals drawn depend on the thread count (MatterGen's
    # sampler draws others with one thread than with two), so both join the stamps they affect.
    Setting("SHARDS", integer(1, 1024), "1",
            "processes (one per GPU where there are several) that generation blocks and relaxation parts are "
            "spread over", ("generate", "sample", "evaluate")),
    Setting("THREADS", integer(0, 1024), "0", "CPU threads per process (0: the cores divided among SHARDS)",
            ("generate", "sample", "evaluate")),
    Setting("RESULTS", path(), DERIVED, "make eval-gen: a results folder, CIF zip or CIF folder"),
    Setting("EVAL_OUT", path(required=False), "", "make eval-gen: where its results go (default: next to RESULTS)"),
    Setting("RELAX", flag, "1", "relax generated crystals and place them on the hull (1) or not (0)", ("evaluate",)),
    Setting("RELAX_STEPS", integer(1), "500",
            "relaxation budget: optimizer steps at most per structure (one still moving is counted unconverged)",
            ("evaluate",)),
    Setting("POTENTIAL", path(), "chgnet", "chgnet, mattersim or a MatterSim .pth",
            ("evaluate",), content=True),
    Setting("REFERENCE", path(), "default", "convex-hull reference: default or a MatterGen LMDB-gz file",
            ("evaluate",), content=True),
    Setting("ALLOW_POTENTIAL_MISMATCH", flag, "0", "1: evaluate with a POTENTIAL other than the reference's (recorded)",
            ("evaluate",), only_with="ALLOW_POTENTIAL_MISMATCH"),
    Setting("RUNS", text, "", "make compare: run folders to set side by side, space-separated"),
    Setting("COMPARE_OUT", path(), "runs/compare", "make compare: where its index.html and runs.csv go"),
    Setting("BASE_STEPS", integer(1), "10000", "make base-model: training steps"),
    Setting("PART", share, "1/1", "make reference: k/n relaxes only the k-th of n shares (spread a build over runs)"),
    Setting("MODEL", path(required=False), "", "make sample: a model dir or a published MatterGen name",
            ("sample",), content=True),
    # property-conditioned runs: PROPERTIES=band_gap,solid_electrolyte (columns of DATA), then
    # CONDITION='band_gap=1.5,solid_electrolyte=yes' GUIDANCE=2.0 to generate for them
    Setting("PROPERTIES", text, "", "property columns of DATA to condition on, comma-separated",
            ("prepare", "finetune"), only_with="PROPERTIES"),
    Setting("FINETUNE_MODE", choice("full", "adapter"), "full", "with PROPERTIES: fine-tune everything or adapters only",
            ("finetune",), only_with="PROPERTIES"),
    Setting("LR", optional(number(0.0, low_open=True)), "", "fine-tuning learning rate (empty: the stage's default)",
            ("finetune",), only_with="LR"),
    Setting("CONDITION", text, "", "name=value,... to generate for (a property-conditioned model)",
            ("generate", "sample"), only_with="CONDITION"),
    Setting("GUIDANCE", number(0.0), "2.0", "classifier-free guidance factor, with CONDITION", ("generate", "sample"),
            only_with="CONDITION"),
)
BY_NAME = {s.name: s for s in SETTINGS}
# What make cannot take as one word of $(shell)'s output and $(eval) back unchanged.
NOT_MAKE_WORD = re.compile(r"[\s$#\\]|\?=")
STAMPS = ("prepare", "finetune", "validate", "generate", "evaluate", "sample")


def makefile_defaults() -> list[str]:
    """``NAME?=VALUE`` for each default, ``NAME`` for one the Makefile derives (see ``defaults``)."""
    words = []
    for s in SETTINGS:
        if s.default is not None and NOT_MAKE_WORD.search(s.default):
            raise SystemExit(f"crygen.settings: {s.name}'s default {s.default!r} is not one plain word for make")
        words.append(s.name if s.default is None else f"{s.name}?={s.default}")
    return words


def help_lines(raw: dict[str, str]) -> list[str]:
    """`make help`'s list: each setting, its meaning, its value, and its default where the value
    is another (a derived default is the Makefile's, given in its terms by its value)."""
    width = max(len(n) for n in BY_NAME)
    lines = []
    for s in SETTINGS:
        other = s.default is not None and raw[s.name] != s.default
        lines.append(f"  {s.name:<{width}}  {s.meaning} [{raw[s.name]}{f'; default {s.default}' if other else ''}]")
    return lines


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    raw = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in BY_NAME:
            raise SystemExit(f"crygen.settings: {pair!r} is not NAME=VALUE of a declared setting")
        raw[name] = value
    missing = [n for n in BY_NAME if n not in raw]
    if missing:
        raise SystemExit(f"crygen.settings: the Makefile gave no value for {' '.join(missing)}")
    return raw


def normalise(raw: dict[str, str]) -> dict[str, Any]:
    """Typed values; the first bad one raises :class:`Bad` with ``NAME=value: problem``."""
    values = {}
    for setting in SETTINGS:
        try:
            values[setting.name] = setting.parse(raw[setting.name])
        except Bad as e:
            raise Bad(f"{setting.name}={raw[setting.name]}: {e}") from None
    return values


def refuse_secrets(given: list[str]) -> None:
    for name in given:
        if SECRET_NAME.search(name):
            raise Bad(f"{name}: a secret on make's command line is visible to every user (ps) and kept in "
                      f"your shell history; export it in the environment or write it in {credentials_file()} "
                      "(mode 600) instead")


# ---------------------------------------------------------------- stamps
def fingerprint(value: str, default_reference: str) -> str | None:
    """What a path's content looks like, cheaply: every file's name, size and modification
    time (a file removed, added or rewritten changes it), hashed. None for a name (chgnet, a
    published model) or a path not there (the stage says so).

    A link in the folder that leads nowhere (or a file gone while it is walked) is recorded as
    the link itself, its own size and time: the fingerprint is no place to refuse it (reading the
    folder is the stage's, which names what is missing in one line), a `make -n` must not fail
    with a traceback, and pointing the link elsewhere still changes the fingerprint."""
    target = Path(default_reference if value == "default" and default_reference else value).expanduser()
    if not target.exists():
        return None
    if target.is_file():
        files = [("", target.stat())]
    else:
        files = []
        for root, dirs, names in os.walk(target):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for n in sorted(names):
                st = file_stat(os.path.join(root, n))
                if st is not None:
                    files.append((os.path.relpath(os.path.join(root, n), target), st))
    h = hashlib.sha256()
    for name, st in files:
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{len(files)} file(s), {h.hexdigest()[:16]}"


def file_stat(file: str) -> os.stat_result | None:
    """What the file a name leads to looks like; for a link that leads nowhere, the link's own;
    None for a name gone since the folder was listed."""
    try:
        return os.stat(file)
    except FileNotFoundError:
        try:
            return os.lstat(file)
        except FileNotFoundError:
            return None


PIPELINE_STAMPS = tuple(s for s in STAMPS if s != "sample")  # make pipeline's


def run_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Of a run's normalised settings, those that shaped it: the run folder and what the
    pipeline's stamps hold (an ``only_with`` setting only when it applied), in the table's
    order. What a run's report and a comparison of runs show."""
    return {s.name: values[s.name] for s in SETTINGS if s.name in values
            and (s.name == "OUT" or set(s.stamps) & set(PIPELINE_STAMPS))
            and not (s.only_with and not values.get(s.only_with))}


def stamp_text(stage: str, values: dict[str, Any], raw: dict[str, str], default_reference: str) -> str:
    """A stage's stamp: the settings it depends on and the content of the paths among them.
    It changes exactly when one of those does, so make redoes exactly the stages concerned."""
    lines = []
    for setting in SETTINGS:
        if stage not in setting.stamps:
            continue
        if setting.only_with and not values[setting.only_with]:
            continue
        lines.append(f"{setting.name}={json.dumps(values[setting.name])}")
        content = fingerprint(raw[setting.name], default_reference) if setting.content and raw[setting.name] else None
        if content:
            lines.append(f"{setting.name} content: {content}")
    return "\n".join(lines) + "\n"


def write_text_atomic(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.replace(tmp, path)


def stale_stamps(files: list[str], values: dict[str, Any], raw: dict[str, str], default_reference: str) -> list[str]:
    """The stamp files (named after their stage) whose content would change: the Makefile
    remakes them; nothing is written here."""
    stale = []
    for file in files:
        try:
            current = Path(file).read_text()
        except OSError:
            current = None
        if current != stamp_text(Path(file).name, values, raw, default_reference):
            stale.append(file)
    return stale


# ---------------------------------------------------------------- commands
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m crygen.settings")
    parser.add_argument("command", choices=("names", "paths", "defaults", "check", "stamp", "json", "help"))
    parser.add_argument("--validate", action="store_true", help="check the settings' values (goals that run stages)")
    parser.add_argument("--given", default="", help="names given on make's command line")
    parser.add_argument("--stamp", action="append", default=[], help="a stamp file to compare (named after its stage)")
    parser.add_argument("--default-reference", default="", help="the file REFERENCE=default names")
    parser.add_argument("--write", type=Path)
    args, assignments = parser.parse_known_args(argv)
    if args.command in ("names", "paths"):
        print(" ".join(BY_NAME if args.command == "names" else path_settings()))
        return 0
    if args.command == "defaults":
        print("\n".join(makefile_defaults()))
        return 0
    raw = parse_assignments(assignments)
    if args.command == "help":
        print("\n".join(help_lines(raw)))
        return 0
    try:
        refuse_secrets(args.given.split())
        values = normalise(raw) if args.validate or args.command != "check" else None
    except Bad as e:
        if args.command == "check":
            print(f"error {e}")  # the Makefile reads the verdict from the output
            return 0
        print(f"settings: error: {e}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(" ".join(["ok", *(stale_stamps(args.stamp, values, raw, args.default_reference) if values else [])]))
    elif args.command == "stamp":
        write_text_atomic(args.write, stamp_text(args.write.name, values, raw, args.default_reference))
    else:
        write_text_atomic(args.write, json.dumps(values, indent=2, allow_nan=False) + "\n")
    return 0


# ---------------------------------------------------------------- inputs named by a path
def path_settings() -> tuple[str, ...]:
    """The variables naming an input file or folder: what travels with a remote job
    (crygen.remote) and what RUNNER=docker mounts (docker/docker.mk, ``paths``). Every setting
    parsed by :func:`path` but the folders written (OUT, EVAL_OUT, COMPARE_OUT), and REFERENCE_DATA: a
    Makefile variable (default $(OUT)/data, eval-gen's training data), not a checked setting."""
    code = path().__code__
    return tuple(s.name for s in SETTINGS if getattr(s.parse, "__code__", None) is code
                 and s.name not in ("OUT", "EVAL_OUT", "COMPARE_OUT")) + ("REFERENCE_DATA",)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
