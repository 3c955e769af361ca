"""A benchmarking and ablation harness for the classic CNNs of the AlexNet lineage."""

__version__ = "0.1.0"
