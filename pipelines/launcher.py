"""What the launcher checks before a job leaves this machine: one launcher, one worker Python.

Beam pickles the pipeline's functions with the launcher's Python and the workers unpickle them
with the image's; between two minor versions that fails at the first bundle (or boot refuses the
job), after the job was submitted and its workers paid for. So a Dataflow job whose worker image
runs another Python minor version than this launcher is refused here, with what to do.

The worker images (docker/) are built FROM Beam's SDK image of WORKER_PYTHON
(tests/test_dataflow_ready.py checks it); a Beam SDK image named with --sdk_container_image
says its own version. Without --sdk_container_image, Dataflow picks Beam's image of the
launcher's Python, which always matches.
"""

from __future__ import annotations

import re
import sys

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, WorkerOptions

WORKER_PYTHON = "3.11"  # the Python of docker/*.Dockerfile: FROM apache/beam_python3.11_sdk
DATAFLOW_RUNNERS = ("DataflowRunner", "TestDataflowRunner")
_BEAM_SDK_IMAGE = re.compile(r"beam_python(\d+\.\d+)_sdk")


class WorkerPythonMismatch(SystemExit):
    """The launcher's Python is not the worker image's: the job would fail on its workers.
    (A SystemExit: the command ends with the message, no traceback.)"""


def worker_image(options: PipelineOptions) -> str | None:
    worker = options.view_as(WorkerOptions)
    return worker.sdk_container_image or worker.worker_harness_container_image


def image_python(image: str) -> str:
    """The Python minor version a worker image runs: a Beam SDK image's own, ours WORKER_PYTHON."""
    found = _BEAM_SDK_IMAGE.search(image)
    return found.group(1) if found else WORKER_PYTHON


def _is_dataflow(runner: object) -> bool:
    name = runner if isinstance(runner, str) else type(runner).__name__ if runner is not None else ""
    return name.rsplit(".", 1)[-1] in DATAFLOW_RUNNERS


def check_worker_python(options: PipelineOptions, launcher: tuple[int, int] | None = None) -> PipelineOptions:
    """Refuses (WorkerPythonMismatch) a Dataflow job whose worker image runs another Python minor
    version than this launcher; any other job passes untouched."""
    if not _is_dataflow(options.view_as(StandardOptions).runner):
        return options
    image = worker_image(options)
    if not image:
        return options
    major, minor = launcher or sys.version_info[:2]
    here, there = f"{major}.{minor}", image_python(image)
    if here != there:
        raise WorkerPythonMismatch(
            f"imgsearch: error: this launcher runs Python {here} but the worker image {image} runs Python "
            f"{there}: its workers could not load what this launcher pickles, so the job is not submitted. "
            f"Launch from a Python {there} environment (README: Running on Dataflow, Launcher), or build "
            f"the worker images FROM apache/beam_python{here}_sdk and change WORKER_PYTHON in pipelines/launcher.py."
        )
    return options
