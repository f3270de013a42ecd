# Dataflow worker for every stage on CPU workers: Beam's own SDK image, the project, CPU torch.
#
#   make images REGISTRY=REGION-docker.pkg.dev/PROJECT/REPOSITORY
#   docker build -f docker/worker-cpu.Dockerfile -t IMAGE .        (from the repository root)
#
# Python and Beam must match the launcher's (python 3.11, apache-beam 2.77.0: setup.py).
# EXTRAS="" builds a lean image (index, fetch, extract-text, rank: no torch at all).
FROM apache/beam_python3.11_sdk:2.77.0

ARG EXTRAS=torch
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

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
