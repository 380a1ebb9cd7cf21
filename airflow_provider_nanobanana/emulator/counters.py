"""Request counters that tests and benchmarks read back from ``GET /_emulator/counters``.

They answer the questions a client's behaviour is judged by: how often did it poll, did it ever
resubmit, how many faults did it meet and survive. All updates are O(1) and lock-free: the server
runs on one event loop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: The counter each endpoint's requests are tallied in.
REQUEST_COUNTERS = {
    "submit": "submits",
    "status": "status_polls",
    "result": "result_polls",
    "cancel": "cancels",
    "files": "file_requests",
}
_MAX_MODEL_KEYS = 1000  # a client looping over bad model ids must not grow the dict forever


@dataclass
class Counters:
    submits: int = 0
    status_polls: int = 0
    result_polls: int = 0
    cancels: int = 0
    file_requests: int = 0
    files_served: int = 0
    bytes_served: int = 0
    jobs_created: int = 0
    auth_failures: int = 0
    #: Billing (billing.py): list price of every job created, and reads of price and balance.
    spent_usd: float = 0.0
    model_reads: int = 0
    balance_reads: int = 0
    faults_injected: Counter[str] = field(default_factory=Counter)
    submits_per_model: Counter[str] = field(default_factory=Counter)

    def count_request(self, endpoint: str) -> None:
        name = REQUEST_COUNTERS[endpoint]
        setattr(self, name, getattr(self, name) + 1)

    def count_fault(self, kind: str) -> None:
        self.faults_injected[kind] += 1

    def count_model(self, model_id: str) -> None:
        if model_id in self.submits_per_model or len(self.submits_per_model) < _MAX_MODEL_KEYS:
            self.submits_per_model[model_id] += 1

    @property
    def faults_total(self) -> int:
        return sum(self.faults_injected.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "submits": self.submits,
            "status_polls": self.status_polls,
            "result_polls": self.result_polls,
            "cancels": self.cancels,
            "file_requests": self.file_requests,
            "files_served": self.files_served,
            "bytes_served": self.bytes_served,
            "jobs_created": self.jobs_created,
            "auth_failures": self.auth_failures,
            "spent_usd": self.spent_usd,
            "model_reads": self.model_reads,
            "balance_reads": self.balance_reads,
            "faults_injected": dict(self.faults_injected),
            "faults_total": self.faults_total,
            "submits_per_model": dict(self.submits_per_model),
        }
