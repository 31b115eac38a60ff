"""FedShare: federated recommendation with personalized data sharing and unlearning."""

__version__ = "0.1.0"
