"""Reliability and security suite (issue #10): the real provider against injected faults."""
