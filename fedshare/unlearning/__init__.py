"""Unsharing and unlearning: requests and ledger, snapshots, the method registry, the methods, judging, the phase."""
