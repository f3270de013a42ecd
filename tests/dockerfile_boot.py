"""What Beam's worker boot (/opt/apache/beam/boot) does with one of our Dockerfiles, read from
the file and replayed with this machine's Python.

At start, boot runs `python -m apache_beam.runners.worker.sdk_worker_main` with the image's
`python` (the first on the image's PATH). Unless the image sets
RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT, it first makes a venv with `--system-site-packages` from
that `python` and runs the worker from the venv; the venv sees the site-packages of the base
installation of that interpreter, never those of a venv it was made from. Boot then stops with
"Apache Beam is not installed in the runtime environment" if apache_beam cannot be found.

`read_plan` follows a Dockerfile's FROM, ENV (with $VAR expansion), `python -m venv DIR` and
`pip install` lines: where the packages went and which environment boot's `python` is.
`simulate` replays boot with the local equivalent of that environment (this interpreter's
environment is the one that has the packages; a venv made from it is what boot would make from
an image's venv) and tries the imports a worker needs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path

SYSTEM = "<the image's default Python environment>"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IN_DEFAULT_ENVIRONMENT = "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"
_PIP = re.compile(r"(?:^|[\s;&|(])(?:\S*/)?(?:pip3?(?:\.\d+)?|python3?(?:\.\d+)? -m pip) install\b")
_VENV = re.compile(r"-m venv\s+(?:--?\S+\s+)*(\S+)")


@dataclasses.dataclass(frozen=True)
class BootPlan:
    base: str  # the FROM image
    env: dict[str, str]  # the image's ENV at the end
    venvs: tuple[str, ...]  # folders made with `python -m venv`
    installed_into: tuple[str, ...]  # the environment of every `pip install` (a venv folder or SYSTEM)
    boot_python: str  # the environment of the `python` boot runs (a venv folder or SYSTEM)
    pythons: tuple[str, ...] = ()  # pythonX.Y named in RUN lines (an interpreter installed or run)

    @property
    def makes_venv(self) -> bool:
        return not self.env.get(IN_DEFAULT_ENVIRONMENT)

    def python_version(self) -> str | None:
        """The Python minor version the image runs, from a Beam SDK base image or a pythonX.Y install."""
        found = re.search(r"beam_python(\d+\.\d+)_sdk", self.base)
        return found.group(1) if found else (self.pythons[0] if self.pythons else None)


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        keyword, _, args = whole.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _env_pairs(args: str, env: dict[str, str]) -> dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: _expand(" ".join(words[1:]), env)}
    return {k: _expand(v, env) for k, _, v in (w.partition("=") for w in words)}


def _which_environment(command: str, env: dict[str, str], venvs: list[str]) -> str:
    """The environment a bare `python`/`pip` resolves to on PATH: a venv whose bin comes first, else SYSTEM."""
    for folder in env.get("PATH", DEFAULT_PATH).split(":"):
        for made in venvs:
            if folder.rstrip("/") == made.rstrip("/") + "/bin":
                return made
    return SYSTEM


def read_plan(text: str, build_args: dict[str, str] | None = None) -> BootPlan:
    env: dict[str, str] = {"PATH": DEFAULT_PATH}
    base = ""
    venvs: list[str] = []
    installed: list[str] = []
    pythons: list[str] = []
    for keyword, args in instructions(text):
        if keyword == "FROM" and not args.split()[0].startswith("--"):
            base = args.split()[0]
        elif keyword == "ARG":
            name, _, default = args.partition("=")
            env.setdefault(name, (build_args or {}).get(name, default))
        elif keyword == "ENV":
            env.update(_env_pairs(args, env))
        elif keyword == "RUN":
            pythons += re.findall(r"\bpython(\d+\.\d+)\b", args)
            for step in re.split(r"&&|;", args):
                made = _VENV.search(step)
                if made:
                    venvs.append(_expand(made.group(1), env))
                if _PIP.search(" " + step.strip()):
                    explicit = re.search(r"(\S+)/bin/(?:pip|python)", step)
                    target = explicit.group(1) if explicit and explicit.group(1) in venvs else _which_environment("pip", env, venvs)
                    installed.append(target)
    build_only = set((build_args or {})) | {name for kw, a in instructions(text) if kw == "ARG" for name in [a.partition("=")[0]]}
    final_env = {k: v for k, v in env.items() if k not in build_only}
    return BootPlan(base, final_env, tuple(venvs), tuple(installed), _which_environment("python", env, venvs), tuple(pythons))


@dataclasses.dataclass(frozen=True)
class BootResult:
    python: str  # the interpreter the worker ran with, here
    steps: tuple[str, ...]  # what was replayed, in words
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _local_python(environment: str, plan: BootPlan, scratch: Path) -> str:
    """This machine's equivalent of one of the image's environments: this interpreter's
    environment for the one the packages went into, an empty venv for any other."""
    if plan.installed_into and environment == plan.installed_into[-1]:
        return sys.executable
    empty = scratch / "empty-env"
    if not empty.exists():
        venv.create(empty, with_pip=False)
    return str(empty / "bin" / "python")


def simulate(plan: BootPlan, modules: list[str], scratch: Path, timeout_s: float = 300) -> BootResult:
    """Replay boot's start of the worker on this machine and import `modules` the way it would."""
    scratch.mkdir(parents=True, exist_ok=True)
    python = _local_python(plan.boot_python, plan, scratch)
    steps = [f"the image's `python` is {plan.boot_python}: here {python}"]
    if plan.makes_venv:
        image_python_is_a_venv = plan.boot_python != SYSTEM
        here_is_a_venv = python != sys.executable or sys.prefix != sys.base_prefix
        if image_python_is_a_venv != here_is_a_venv:
            # the image installs into its base interpreter but this one is a venv (or the other
            # way round): a venv made here would not mirror the image's; say so, do not guess
            raise NotImplementedError(
                f"boot's venv cannot be replayed here: the image's python is {plan.boot_python}, "
                f"this machine's equivalent {'is' if here_is_a_venv else 'is not'} a venv"
            )
        boot_venv = scratch / "beam-venv"
        made = subprocess.run([python, "-m", "venv", "--system-site-packages", "--without-pip", str(boot_venv)],
                              capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
        if made.returncode:
            return BootResult(python, tuple(steps), made.returncode, made.stdout + made.stderr)
        python = str(boot_venv / "bin" / "python")
        steps.append(f"boot makes a venv with --system-site-packages from it ({IN_DEFAULT_ENVIRONMENT} unset): here {python}")
    else:
        steps.append(f"{IN_DEFAULT_ENVIRONMENT} is set: boot runs that python itself")
    code = "import importlib, sys\nfor m in %r:\n    importlib.import_module(m)\nprint(sys.prefix)" % (modules,)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=scratch, env=env, timeout=timeout_s)
    return BootResult(python, tuple(steps), done.returncode, done.stdout + done.stderr)
