# Dataflow GPU worker for extract-images: a CUDA 13.0 runtime (what torch 2.14.1's PyPI wheels are
# built for; the VM needs NVIDIA driver >= 580), Python 3.11, the project with torch, and Beam's
# worker boot copied from the SDK image of the same Beam and Python versions.
#
#   make images REGISTRY=REGION-docker.pkg.dev/PROJECT/REPOSITORY
#   docker build -f docker/worker-gpu.Dockerfile -t IMAGE .        (from the repository root)
#
# Python and Beam must match the launcher's (python 3.11, apache-beam 2.77.0: setup.py).
FROM nvidia/cuda:13.0.0-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Python 3.11 (Ubuntu 22.04 ships 3.10) from the deadsnakes archive, in a venv first on PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv

WORKDIR /opt/imgsearch
COPY requirements/ requirements/
RUN pip install --upgrade pip \
    && pip install -c requirements/constraints.txt -r requirements/torch-gpu.txt
COPY setup.py ./
COPY pipelines/ pipelines/
COPY model/ model/
COPY export/ export/
COPY site/ site/
RUN pip install -c requirements/constraints.txt ".[torch]" \
    && pip check \
    && python -c "import torch, apache_beam; print(torch.__version__, torch.version.cuda, apache_beam.__version__)"

# Beam's worker boot, as Dataflow's GPU guide shows; it starts the SDK harness with this image's python
COPY --from=apache/beam_python3.11_sdk:2.77.0 /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
