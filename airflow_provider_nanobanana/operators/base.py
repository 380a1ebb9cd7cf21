"""What both edit operators share: the model's parameters, the connections, polling and deferral.

:class:`~airflow_provider_nanobanana.operators.nano_banana.NanoBananaEditOperator` (one edit per
task) and :class:`~airflow_provider_nanobanana.batch.operator.NanoBananaBatchEditOperator` (many per
task) declare these once, here, so a new model parameter or a new limit reaches both.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator

from airflow_provider_nanobanana.config import MIN_DEFERRAL_S
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.media.keys import DEFAULT_KEY_TEMPLATE, MAX_PRESIGN_EXPIRY_S, parse_s3_prefix
from airflow_provider_nanobanana.media.quality import (
    OnBadOutput,
    QualityGate,
    archive_through,
    check_max_resubmits,
)
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, MODEL_PARAMETERS
from airflow_provider_nanobanana.outcome import check_seconds
from airflow_provider_nanobanana.polling import PollPolicy
from airflow_provider_nanobanana.retry_policy import default_retry_policy
from airflow_provider_nanobanana.spend.budget import BudgetLimits, OnBudgetExhausted
from airflow_provider_nanobanana.trigger_queue import check_triggerer_queue, route_deferral

if TYPE_CHECKING:
    from airflow_provider_nanobanana.media.hook import S3MediaHook
    from airflow_provider_nanobanana.media.results import ArchiveResult


class NanoBananaBaseOperator(BaseOperator):
    """The model's tuning knobs and the settings every edit needs.

    Model inputs mirror the API: ``num_images`` (1-4), ``seed``, ``aspect_ratio``, ``resolution``,
    ``output_format``, ``safety_tolerance`` (1-6), ``limit_generations``, ``enable_web_search``; they
    are validated, with every bad field named, before anything is sent.

    :param prompt: the edit instruction (templated).
    :param model_id: RunComfy model to submit to; the inputs above are this model's schema.
    :param runcomfy_conn_id: ``runcomfy`` connection (password = API token).
    :param aws_conn_id: AWS connection for ``s3://`` inputs and the output prefix.
    :param poll_interval: seconds before a job's first status poll; later polls back off to
        ``poll_max_interval``.
    :param poll_max_interval: longest wait between two polls of one job, in seconds.
    :param timeout: seconds to wait before giving up (queued jobs are then cancelled).
    :param presign_expiry: lifetime (s) of pre-signed input URLs; must outlive the queue wait.
    :param min_deferral: seconds after deferring before the trigger may fire, so a job that ends
        just after the task deferred cannot hit Airflow's defer-exit race (``None``: ``[nanobanana]
        min_deferral_s``, default 15). See docs/reliability.md.
    :param triggerer_queue: run this task's polling only on triggerers started with
        ``airflow triggerer --queues <name>`` (Airflow 3.2+ with ``[triggerer] queues_enabled``);
        the task itself still runs on its own ``queue``. ``None``: the task's ``queue``, as Airflow
        does. Ignored on 3.1. See docs/trigger.md.
    :param max_paid_requests: most paid requests (``None``: no limit), counted across retries,
        resumes and triggerer restarts in an S3 ledger: per batch, or per DAG run and ``budget_key``
        for single edits (a mapped fleet shares one). See docs/cost-control.md.
    :param max_spend_usd: most dollars, reserved at the list price before each submit and settled
        at the cost RunComfy reports (``None``: no limit).
    :param on_budget_exhausted: ``"skip"`` (default), ``"fail"`` or ``"succeed"``: the task's outcome
        for work the budget did not cover (never submitted, never paid).
    :param on_bad_output: ``"fail"`` (default), ``"keep"`` or ``"resubmit"``: what happens to an
        archived output that fails the quality gate (empty, undecodable, no pixels, a uniform blank,
        fewer than ``num_images``). See docs/cost-control.md#output-quality-gate.
    :param max_resubmits: paid requests ``"resubmit"`` may add per edit (default 1).
    :param reuse_outputs: do not pay again for an edit already archived under the same
        ``output_s3_uri`` (same model, parameters, seed, prompt and input bytes): copy its outputs
        instead (default ``False``). See docs/cost-control.md#reuse.

    On Airflow 3.3+ the task's ``retry_policy`` defaults to
    :class:`~airflow_provider_nanobanana.retry_policy.RunComfyRetryPolicy` (auth and rejected input
    fail at once, a 429 retries after ``Retry-After``); pass ``retry_policy=...`` (or ``None``) to
    override it. See docs/retries.md.
    """

    def __init__(
        self,
        *,
        prompt: str,
        timeout: float,
        num_images: int = 1,
        seed: int = 0,
        aspect_ratio: str = "auto",
        resolution: str = "1K",
        output_format: str = "png",
        safety_tolerance: int = 4,
        limit_generations: bool = True,
        enable_web_search: bool = False,
        model_id: str = DEFAULT_MODEL_ID,
        runcomfy_conn_id: str = RunComfyHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        poll_interval: float = 2.0,
        poll_max_interval: float = 30.0,
        presign_expiry: int = 6 * 3600,
        min_deferral: float | None = None,
        triggerer_queue: str | None = None,
        max_paid_requests: int | None = None,
        max_spend_usd: float | None = None,
        on_budget_exhausted: str = "skip",
        reuse_outputs: bool = False,
        on_bad_output: str = "fail",
        max_resubmits: int = 1,
        **kwargs: Any,
    ) -> None:
        default_retry_policy(kwargs)
        super().__init__(**kwargs)
        self.prompt = prompt
        self.num_images = num_images
        self.seed = seed
        self.aspect_ratio = aspect_ratio
        self.resolution = resolution
        self.output_format = output_format
        self.safety_tolerance = safety_tolerance
        self.limit_generations = limit_generations
        self.enable_web_search = enable_web_search
        self.model_id = model_id
        self.runcomfy_conn_id = runcomfy_conn_id
        self.aws_conn_id = aws_conn_id
        self.poll_interval = poll_interval
        self.poll_max_interval = poll_max_interval
        self.presign_expiry = presign_expiry
        self.min_deferral = check_seconds("min_deferral", min_deferral)
        self.triggerer_queue = check_triggerer_queue(triggerer_queue)
        if timeout is None or check_seconds("timeout", timeout) == 0:
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)
        if isinstance(presign_expiry, bool) or not isinstance(presign_expiry, int):
            raise ValueError(f"presign_expiry must be whole seconds, got {presign_expiry!r}")
        if not 1 <= presign_expiry <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(
                f"presign_expiry must be 1..{MAX_PRESIGN_EXPIRY_S} s (the SigV4 limit), got {presign_expiry}"
            )
        PollPolicy.between(poll_interval, poll_max_interval)
        self.budget = BudgetLimits(max_paid_requests, max_spend_usd)
        self.on_budget_exhausted = OnBudgetExhausted.parse(on_budget_exhausted)
        if not isinstance(reuse_outputs, bool):
            raise ValueError(f"reuse_outputs must be True or False, got {reuse_outputs!r}")
        self.reuse_outputs = reuse_outputs
        self.on_bad_output = OnBadOutput.parse(on_bad_output)
        self.max_resubmits = check_max_resubmits(max_resubmits)

    def check_archive_settings(self, output_s3_uri: str | None, budget_s3_uri: str | None = None) -> None:
        """At parse time: ``on_bad_output`` keep/resubmit and ``reuse_outputs`` work on the archive, so
        they need ``output_s3_uri``; ``budget_s3_uri`` must be an ``s3://`` prefix. A value still to be
        rendered (a template in a templated field) is checked when the task runs."""
        if not output_s3_uri:
            if self.on_bad_output is not OnBadOutput.FAIL:
                raise ValueError(
                    f"on_bad_output={self.on_bad_output.value!r} keeps or replaces archived outputs: "
                    "set output_s3_uri (or use on_bad_output='fail')"
                )
            if self.reuse_outputs:
                raise ValueError("reuse_outputs=True reuses outputs archived under output_s3_uri: set it")
        if budget_s3_uri and not self._rendered_later("budget_s3_uri", budget_s3_uri):
            parse_s3_prefix(budget_s3_uri, what="budget_s3_uri")

    def _rendered_later(self, name: str, value: object) -> bool:
        """Whether ``value`` of field ``name`` is a Jinja template Airflow renders before ``execute``."""
        return name in self.template_fields and isinstance(value, str) and ("{{" in value or "{%" in value)

    def model_parameters(self) -> dict[str, Any]:
        """Every model input but the prompt and the images, as the API names them."""
        return {name: getattr(self, name) for name in MODEL_PARAMETERS}

    @property
    def policy(self) -> PollPolicy:
        return PollPolicy.between(self.poll_interval, self.poll_max_interval)

    @cached_property
    def hook(self) -> RunComfyHook:
        return RunComfyHook(self.runcomfy_conn_id, model_id=self.model_id)

    @cached_property
    def media(self) -> S3MediaHook:
        from airflow_provider_nanobanana.media.hook import S3MediaHook

        return S3MediaHook(
            self.aws_conn_id,
            presign_expiry_s=self.presign_expiry,
            allowed_output_hosts=self.hook.settings.allowed_output_hosts,
        )

    def archive_edit(
        self,
        images: list[str],
        *,
        request_id: str,
        dest_uri: str,
        fields: Mapping[str, Any],
        prompt: str,
        inputs: list[str],
        key_template: str | None = None,
        quality: QualityGate | None = None,
        fingerprint: str | None = None,
        cost_usd: float | None = None,
    ) -> ArchiveResult:
        """Archive one completed request's outputs, with the manifest both operators write.

        With ``quality`` (:meth:`quality_gate`) the outputs pass the quality gate on the way; a
        rejection raises :class:`~airflow_provider_nanobanana.media.quality.BadOutputError`.
        """
        parameters = self.model_parameters()

        def archive(urls: list[str]) -> ArchiveResult:
            return self.media.archive_outputs(
                urls,
                request_id=request_id,
                dest_uri=dest_uri,
                key_template=key_template or DEFAULT_KEY_TEMPLATE,
                fields=fields,
                model_id=self.model_id,
                prompt=prompt,
                seed=parameters["seed"],
                inputs=inputs,
                parameters={**parameters, "prompt": prompt},
                quality=quality,
                fingerprint=fingerprint,
                cost_usd=cost_usd,
            )

        if quality is None:
            return archive(images)
        return archive_through(quality, request_id, images, archive)

    def quality_gate(self, paid_requests: int = 1) -> QualityGate:
        """The output quality gate of one edit, under this task's ``on_bad_output``."""
        return QualityGate(self.on_bad_output, expected_count=self.num_images, paid_requests=paid_requests)

    def defer(self, *, trigger: Any, method_name: str, **kwargs: Any) -> NoReturn:
        """Airflow's ``defer``, with the trigger on ``triggerer_queue`` (see trigger_queue.py)."""
        route_deferral(self, self.triggerer_queue)
        super().defer(trigger=trigger, method_name=method_name, **kwargs)

    def min_deferral_s(self) -> float:
        """The hold of this task's trigger, read on the worker where ``[nanobanana]`` applies."""
        return MIN_DEFERRAL_S.resolve(self.min_deferral)
