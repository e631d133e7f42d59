"""Evaluators: sample quality, likelihood, representation probes and throughput."""
