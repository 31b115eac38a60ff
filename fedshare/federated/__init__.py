"""Federated rounds: FedMF, FedShare's clients and graph server, their losses."""
