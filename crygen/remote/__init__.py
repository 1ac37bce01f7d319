"""Remote jobs through dpdispatcher: profiles, what travels, the job record, the results.

Runs in the light submit-side environment (requirements-local.txt): no torch, no MatterGen.
A job runs `make TARGET` in a copy of the project on the remote side, against a compute
environment that already exists there (the profile's ``make_vars``: a container image's
venv, a cluster's shared venv), so it behaves as it does locally and installs nothing.

By concern:

- :mod:`.credentials`: the credentials file, the ``${NAME}`` lookup (:class:`Lookup`) and the
  :class:`Redactor` that masks every secret read;
- :mod:`.profiles`: machine profiles (:class:`Profile`), placeholders, dpdispatcher's Machine,
  and the schema of a profile's ``crygen`` section (``python -m crygen.remote profile-doc``);
- :mod:`.staging`: what travels: inputs, job variables, the task folder, its manifest, the job script;
- :mod:`.jobs`: job folders (:class:`JobStore`) and one command's submissions, status checks
  and fetches (:class:`Dispatcher`, which owns the redactor and the lookup).

Layout of ``remote/jobs/<job-id>/``: ``job.json`` (the record, never a secret),
``task/`` (what travels; removed once the results are in), ``run/`` (the job's run folder),
``make.log``/``make.err`` (the job's output) and ``dpdispatcher.log``.
"""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
PROFILES = PROJECT / "remote" / "profiles"
RUN_DIR, RUN_ARCHIVE, TASK_DIR, SCRIPT = "run", "run.tar.gz", "task", "crygen-job.sh"
OUTLOG, ERRLOG = "make.log", "make.err"
