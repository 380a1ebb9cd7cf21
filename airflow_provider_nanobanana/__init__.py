"""Apache Airflow provider for RunComfy's Model API (``google/nano-banana-2/edit``)."""

from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["__version__"]
