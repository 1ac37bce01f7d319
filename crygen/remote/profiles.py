"""Machine profiles (remote/profiles/*.json): dpdispatcher's machine and resources sections,
checked by dpdispatcher's own schema, and crygen's section, declared here the same way (with
dargs), so that its checks and its docs (``python -m crygen.remote profile-doc``) come from one
declaration."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from crygen.fileio import CrygenError, one_line, read_json
from crygen.remote import PROFILES
from crygen.settings import credentials_file

if TYPE_CHECKING:
    from dargs import Argument

    from crygen.remote.credentials import Lookup, Redactor

# remote_profile keys whose values are secrets: only ever ${NAME} placeholders in a profile,
# dropped from the machine once its client has logged in (dpdispatcher serialises the
# remote_profile into its records and hashes).
SECRET_KEYS = ("password", "access_key", "app_key", "passphrase", "ticket")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def crygen_arginfo() -> "Argument":
    """The schema of a profile's ``crygen`` section, checked after its placeholders are filled."""
    from dargs import Argument

    return Argument("crygen", dict, [
        Argument("make_vars", dict, optional=True, default={},
                 doc="Make variables every job gets, e.g. VENV and ENV_READY for the compute environment on "
                     "that side (values may be ${NAME} placeholders)."),
        Argument("paths", dict, optional=True, default={},
                 doc="Path variables (DATA, BASE_MODEL, ...) whose value already lies on that side: "
                     "NAME: path there. Such an input does not travel."),
        Argument("input_cache", [str, None], optional=True, default=None,
                 doc="A folder on that side keeping inputs by content, so that one is uploaded once "
                     "(local and SSH contexts)."),
        Argument("check_interval", [int, float], optional=True, default=30,
                 doc="Seconds between status checks while waiting for a job."),
    ], optional=True, default={}, doc="crygen's settings for jobs on this machine.")


def profile_doc() -> str:
    return crygen_arginfo().gen_doc()


@dataclass
class Profile:
    """A machine profile: dpdispatcher's machine and resources dicts plus crygen's settings
    (see :func:`crygen_arginfo`)."""

    name: str
    path: Path
    raw: dict

    @classmethod
    def load(cls, name: str) -> "Profile":
        path = Path(name) if name.endswith(".json") else PROFILES / f"{name}.json"
        if not path.is_file():
            known = sorted(p.stem for p in PROFILES.glob("*.json"))
            raise CrygenError(path, f"no such machine profile (profiles: {', '.join(known)}; or a path to a .json)")
        raw = read_json(path)
        if not isinstance(raw, dict) or not {"machine", "resources"} <= raw.keys():
            raise CrygenError(path, "a profile is a JSON object with 'machine' and 'resources' (and optionally 'crygen')")
        unknown = set(raw) - {"machine", "resources", "crygen", "description"}
        if unknown:
            raise CrygenError(path, f"unknown top-level keys {sorted(unknown)}")
        profile = cls(path.stem, path, raw)
        profile._refuse_literal_secrets()
        return profile

    def _refuse_literal_secrets(self) -> None:
        remote_profile = self.raw["machine"].get("remote_profile", {})
        for key in SECRET_KEYS:
            value = remote_profile.get(key)
            if value is not None and not (isinstance(value, str) and PLACEHOLDER.fullmatch(value)):
                raise CrygenError(self.path, f"machine.remote_profile.{key}: a secret does not belong in a profile; "
                                  f"write ${{NAME}} and set NAME in the environment or in {credentials_file()} (mode 600)")

    def settings(self, lookup: "Lookup") -> dict:
        """The crygen section, placeholders filled, checked by its schema, defaults filled in."""
        settings = expand(self.raw.get("crygen", {}), f"{self.path}: crygen", lookup)
        schema = crygen_arginfo()
        try:
            schema.check_value(settings, strict=True)
        except Exception as e:  # dargs raises several types; all mean a bad profile
            raise CrygenError(self.path, f"crygen: {lookup.redact(one_line(e))}") from None
        return schema.normalize_value(settings)

    def machine_and_resources(self, local_root: Path, lookup: "Lookup", image: str | None = None) -> tuple[dict, dict]:
        """Both dicts with placeholders filled, checked by dpdispatcher's own argument schema."""
        from dpdispatcher import Machine, Resources

        machine = expand(self.raw["machine"], f"{self.path}: machine", lookup)
        resources = expand(self.raw["resources"], f"{self.path}: resources", lookup)
        machine["local_root"] = str(local_root)
        if image:
            self._set_image(machine, image)
        resources.setdefault("batch_type", machine.get("batch_type"))  # selects the scheduler's own keys
        for what, schema, value in (("machine", Machine.arginfo(), machine), ("resources", Resources.arginfo(), resources)):
            try:
                schema.check_value(value, strict=True)
            except Exception as e:  # dargs raises several types; all mean a bad profile
                raise CrygenError(self.path, f"{what}: {lookup.redact(one_line(e))}") from None
        return machine, resources

    def _set_image(self, machine: dict, image: str) -> None:
        """Bohrium's two APIs name the image differently."""
        remote_profile = machine.get("remote_profile", {})
        if "image_address" in remote_profile:
            remote_profile["image_address"] = image
        elif isinstance(remote_profile.get("input_data"), dict):
            remote_profile["input_data"]["image_name"] = image
        else:
            raise CrygenError(self.path, "IMAGE is given but this profile runs no container image")


def expand(value: Any, where: str, lookup: Callable[[str], str | None]) -> Any:
    """Fill ``${NAME}`` / ``${NAME:-default}``; a value that is one placeholder and reads as a
    JSON number or boolean becomes one (ports, program ids)."""
    if isinstance(value, dict):
        return {k: expand(v, f"{where}.{k}", lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, f"{where}[{i}]", lookup) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def fill(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = lookup(name)
        if found is None:
            if default is None:
                raise CrygenError(None, f"{where}: ${{{name}}} is not set (environment or {credentials_file()})")
            found = default
        return found

    filled = PLACEHOLDER.sub(fill, value)
    if PLACEHOLDER.fullmatch(value):
        with contextlib.suppress(ValueError):
            typed = json.loads(filled)
            if isinstance(typed, (int, float, bool)):
                return typed
    return filled


def build_machine(machine_dict: dict, redact: "Redactor"):
    """dpdispatcher's Machine, its secrets dropped from the profile it serialises."""
    from dpdispatcher import Machine

    try:
        machine = Machine.load_from_dict(machine_dict)
    except Exception as e:
        raise CrygenError(None, f"cannot set up machine {machine_dict.get('batch_type')}: {redact(one_line(e))}") from None
    for key in SECRET_KEYS:
        machine.context.remote_profile.pop(key, None)  # the logged-in client keeps its own copy
    return machine
