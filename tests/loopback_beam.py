"""Runs one of Beam's portable services (`python -m MODULE ARGS...`) with every gRPC port it
opens bound to 127.0.0.1 instead of all interfaces.

    python tests/loopback_beam.py apache_beam.runners.worker.worker_pool_main --service_port 0
    python tests/loopback_beam.py apache_beam.runners.portability.local_job_service_main --port 0

Beam's worker pool, job service, artifact server and the Fn API servers the job service opens
for its workers all bind `[::]` (or `localhost`, which may be more than one address). The tests
must not listen beyond this machine, so `add_insecure_port` is rewritten before the module runs.
With LOOPBACK_PORT_FILE set, the first port bound is written there (the worker pool has no
port file of its own, and `--service_port 0` then needs no free-port guess).

The job service also honours a job's `--direct_num_workers N`: it then asks the pool for N
SDK workers and splits every stage's input between them (as `--direct_running_mode
multi_processing` does), which is what a Dataflow job with several workers does. Beam's own
local job service always asks for one: it builds its FnApiRunner without the job's options.
"""

from __future__ import annotations

import os
import runpy
import sys

LOOPBACK = "127.0.0.1"
PORT_FILE_ENV = "LOOPBACK_PORT_FILE"


def loopback_address(address: str) -> str:
    """`[::]:N`, `0.0.0.0:N`, `localhost:N` or `:N` -> `127.0.0.1:N`; other addresses unchanged."""
    host, sep, port = address.rpartition(":")
    if sep and host in ("[::]", "0.0.0.0", "localhost", ""):
        return f"{LOOPBACK}:{port}"
    return address


def _patch_grpc() -> None:
    from grpc import _server

    original = _server._Server.add_insecure_port
    port_file = os.environ.pop(PORT_FILE_ENV, None)  # not inherited by the workers it starts
    written = []

    def add_insecure_port(self, address: str) -> int:
        port = original(self, loopback_address(address))
        if port_file and not written:
            with open(port_file + ".tmp", "w") as out:
                out.write(str(port))
            os.replace(port_file + ".tmp", port_file)
            written.append(port)
        return port

    _server._Server.add_insecure_port = add_insecure_port


def _patch_sdk_workers() -> None:
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    original = fn_runner.FnApiRunner.run_via_runner_api

    def run_via_runner_api(self, pipeline_proto, options):
        # options that came through the Job API are strings
        workers = int(options.view_as(DirectOptions).direct_num_workers or 0)
        if workers > 1:
            self._num_workers = workers
        return original(self, pipeline_proto, options)

    fn_runner.FnApiRunner.run_via_runner_api = run_via_runner_api


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    module, args = argv[0], argv[1:]
    _patch_grpc()
    if module.endswith("local_job_service_main"):
        _patch_sdk_workers()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
