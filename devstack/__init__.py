"""A local, offline stack for the provider: RunComfy emulator, moto S3 and a real Airflow 3 deployment.

Not shipped in the wheel. Used by ``python -m devstack.demo`` (``make demo``) and by the end-to-end
test in ``tests/e2e``. Every service is a separate process in its own process group, logging to
``.run/<name>/logs/``; :class:`devstack.services.LocalStack` starts them and always stops them.

Modules: ``processes`` (start/stop/wait primitives), ``services`` (the stack), ``airflow_api``
(REST client), ``seed`` (labelled input images), ``enrichment`` (driving the example DAG),
``contact_sheet`` (the demo's PNG) and ``demo``.
"""
