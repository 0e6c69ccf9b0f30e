"""fedspine-ray: federated fine-tuning and structured pruning of LLMs on heterogeneous devices, on Ray."""

__version__ = "0.1.0"
