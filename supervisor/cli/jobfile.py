"""Reading a job file where the operator runs `trainguard job submit`: bounded, strict
(`supervisor.core.jobspec`), with relative paths made absolute here — `workdir` against
the directory the command runs in, `checkpoint_dir` against the workdir — because the
daemon and the nodes cannot know where the operator stood."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from supervisor.core.jobspec import JobSpec, JobSpecError, load_jobspec
from supervisor.shared.safefile import FileRefused, read_bounded

JOB_FILE_LIMIT = 256 * 1024


class JobFileError(Exception):
    """A job file that cannot be submitted; the message has one `file:line:` per problem."""


def read_job_file(path: Path, cwd: Path | None = None) -> JobSpec:
    try:
        data = read_bounded(path, JOB_FILE_LIMIT, "a job file")
    except FileRefused as exc:
        raise JobFileError(f"{path}:0: {exc}") from None
    try:
        spec = load_jobspec(data, str(path))
    except JobSpecError as exc:
        raise JobFileError("\n".join(str(p) for p in exc.problems)) from None
    base = (cwd or Path.cwd()).resolve()
    workdir = Path(os.path.expanduser(spec.workdir))
    workdir = workdir if workdir.is_absolute() else (base / workdir)
    ckpt = Path(os.path.expanduser(spec.checkpoint_dir))
    ckpt = ckpt if ckpt.is_absolute() else (workdir / ckpt)
    return msgspec.structs.replace(spec, workdir=os.path.normpath(workdir), checkpoint_dir=os.path.normpath(ckpt))
