"""Spend control: what a run may pay for (budget) and what it has paid for already (reuse)."""
