# Dataflow worker on CPU workers: Beam's SDK image and the project, in its default environment.
#
#   make images REGISTRY=REGION-docker.pkg.dev/PROJECT/REPOSITORY
#   docker build -f docker/worker-cpu.Dockerfile -t IMAGE .                   (from the repository root)
#   docker build -f docker/worker-cpu.Dockerfile --build-arg EXTRAS= -t IMAGE .   (the lean image)
#
# Two images from this file:
#   worker-cpu (EXTRAS=torch, the default): CPU torch too, for extract-images on CPU workers.
#   worker-lean (EXTRAS=""): index, fetch, extract-text and rank; no torch at all.
# With either, a worker starts without installing anything (no --setup_file needed, none of PyPI
# reached): RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 skips the venv Beam's boot would make.
#
# Python and Beam must match the launcher's (python 3.11, apache-beam 2.77.0: setup.py); the
# launcher refuses a DataflowRunner job from another Python (pipelines/launcher.py).
FROM apache/beam_python3.11_sdk:2.77.0

ARG EXTRAS=torch
ENV RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/imgsearch
COPY requirements/ requirements/
# torch first, from PyTorch's CPU index (PyPI's wheels would pull ~3 GB of CUDA)
RUN if [ -n "$EXTRAS" ]; then pip install -c requirements/constraints.txt -r requirements/torch-cpu.txt; fi
COPY setup.py ./
COPY pipelines/ pipelines/
COPY model/ model/
COPY export/ export/
COPY site/ site/
RUN pip install -c requirements/constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && pip check \
    && python -c "import apache_beam, pipelines.rank, pipelines.extract_text; print(apache_beam.__version__)"

# The SDK image's entrypoint stays: /opt/apache/beam/boot
