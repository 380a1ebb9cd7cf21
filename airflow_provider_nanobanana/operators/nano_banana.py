"""Edit images with ``google/nano-banana-2/edit``: submit on the worker, wait in the triggerer.

One task, one paid request:

1. validate every input before any network call;
2. on a retry, re-attach to the request an earlier try submitted if it is queued, running or
   completed (never a second POST for the same work);
3. otherwise resolve ``s3://`` inputs to pre-signed URLs and submit once;
4. remember the request id (XCom for links, the job ledger for retries) before waiting;
5. defer to :class:`RunComfyJobTrigger` (or wait in place with ``deferrable=False``);
6. on completion archive every output to S3, or fail saying which outputs are missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_nanobanana._compat import AirflowFailException
from airflow_provider_nanobanana.exceptions import (
    RunComfyError,
    RunComfyNotFoundError,
    RunComfyRateLimitedError,
    RunComfySubmitUnknownError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.hooks.runcomfy import Endpoint, RunComfyHook
from airflow_provider_nanobanana.lineage import openlineage_facets, output_asset
from airflow_provider_nanobanana.links import REQUEST_ID_XCOM_KEY, REQUEST_URL_XCOM_KEY, RunComfyRequestLink
from airflow_provider_nanobanana.media.keys import (
    DEFAULT_KEY_TEMPLATE,
    check_destination,
    fields_from_context,
)
from airflow_provider_nanobanana.models import (
    DEFAULT_MODEL_ID,
    MODEL_PARAMETERS,
    EditRequest,
    JobEvent,
    JobState,
)
from airflow_provider_nanobanana.outcome import raise_for_event
from airflow_provider_nanobanana.polling import JobWatch, PollPolicy, wait_for_job
from airflow_provider_nanobanana.reattach import JobLedger, fingerprint
from airflow_provider_nanobanana.redaction import redact_url
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger, cancel_if_queued

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_nanobanana.media import S3MediaHook

#: The deferral's own timeout sits this far past the trigger's deadline, so the trigger's clean
#: ``timeout`` event (which lets ``execute_complete`` cancel and explain) always arrives first.
DEFERRAL_MARGIN_S = 120.0


def _no_retry(exc: Exception) -> Exception:
    """Wrap ``exc`` so Airflow fails the task without retrying (a retry could pay twice)."""
    return AirflowFailException(str(exc))


class NanoBananaEditOperator(BaseOperator):
    """Edit images with RunComfy's ``google/nano-banana-2/edit`` model.

    Model inputs mirror the API: ``prompt``, ``image_urls`` (1-20 ``https://`` URLs or ``s3://``
    URIs), ``num_images`` (1-4), ``seed``, ``aspect_ratio``, ``resolution``, ``output_format``,
    ``safety_tolerance`` (1-6), ``limit_generations``, ``enable_web_search``.

    :param model_id: RunComfy model to submit to; the inputs above are this model's schema.
    :param runcomfy_conn_id: ``runcomfy`` connection (password = API token).
    :param poll_interval: seconds before the first status poll; later polls back off to
        ``poll_max_interval``.
    :param poll_max_interval: longest wait between two polls, in seconds.
    :param timeout: seconds to wait for the job before cancelling it (if still queued) and failing.
    :param deferrable: wait in the triggerer (default; frees the worker slot). ``False`` waits on
        the worker, for deployments without a triggerer.
    :param cancel_on_kill: cancel the job (if still queued) when the task is killed, marked
        failed or cleared while it waits; RunComfy cannot cancel a running job.
    :param aws_conn_id: AWS connection for ``s3://`` inputs and ``output_s3_uri``.
    :param staging_s3_uri: ``s3://bucket/prefix/`` where local-file inputs are uploaded (by content
        hash) before being pre-signed; without it local paths are refused.
    :param output_s3_uri: ``s3://bucket/prefix/``; when set, every output is archived there with a
        JSON manifest, and the task fails if any output cannot be archived.
    :param s3_key_template: key of each archived image below ``output_s3_uri``.
    :param presign_expiry: lifetime (s) of pre-signed input URLs; must outlive the queue wait.

    Returns (XCom) ``{"request_id", "status", "images", "archived", "manifest", "model_id"}``. The
    ``images`` are the output URLs with any signature redacted; ``archived`` are the S3 URIs.
    """

    template_fields: Sequence[str] = (
        "prompt",
        "image_urls",
        "output_s3_uri",
        "staging_s3_uri",
        "s3_key_template",
    )
    template_fields_renderers = {"prompt": "md"}
    operator_extra_links = (RunComfyRequestLink(),)
    ui_color = "#ffe135"

    def __init__(
        self,
        *,
        prompt: str,
        image_urls: list[str] | str,
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
        poll_interval: float = 2.0,
        poll_max_interval: float = 30.0,
        timeout: float = 3600.0,
        deferrable: bool = True,
        cancel_on_kill: bool = True,
        aws_conn_id: str | None = "aws_default",
        output_s3_uri: str | None = None,
        staging_s3_uri: str | None = None,
        s3_key_template: str | None = None,
        presign_expiry: int = 6 * 3600,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.image_urls = image_urls
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
        self.poll_interval = poll_interval
        self.poll_max_interval = poll_max_interval
        self.timeout = timeout
        self.deferrable = deferrable
        self.cancel_on_kill = cancel_on_kill
        self.aws_conn_id = aws_conn_id
        self.output_s3_uri = output_s3_uri
        self.staging_s3_uri = staging_s3_uri
        self.s3_key_template = s3_key_template
        self.presign_expiry = presign_expiry
        self._request_id: str | None = None
        self._archived: list[str] = []
        asset = output_asset(output_s3_uri)
        if asset is not None and not kwargs.get("outlets"):
            self.outlets = [asset]  # downstream DAGs can be scheduled on newly archived images
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        PollPolicy.between(poll_interval, poll_max_interval)

    @cached_property
    def hook(self) -> RunComfyHook:
        return RunComfyHook(self.runcomfy_conn_id, model_id=self.model_id)

    @property
    def policy(self) -> PollPolicy:
        return PollPolicy.between(self.poll_interval, self.poll_max_interval)

    # -- inputs -----------------------------------------------------------------------------------
    def edit_fields(self) -> dict[str, Any]:
        """The model input as the user gave it (after templating), before ``s3://`` resolution."""
        urls = self.image_urls
        if isinstance(urls, str):  # a single URL, or a template that rendered to one
            urls = [urls]
        return {
            "prompt": self.prompt,
            "image_urls": list(urls) if isinstance(urls, (list, tuple)) else urls,
            **{name: getattr(self, name) for name in MODEL_PARAMETERS},
        }

    def validate_inputs(self) -> dict[str, Any]:
        """Fail fast, before any network call, with every bad field named."""
        fields = self.edit_fields()
        EditRequest.build(
            **fields, allow_insecure_inputs=self.hook.settings.allow_insecure_inputs, allow_unresolved=True
        )
        return fields

    def _resolve_request(self, fields: Mapping[str, Any]) -> EditRequest:
        urls = list(fields["image_urls"])
        if any(not u.startswith(("https://", "http://")) for u in urls):  # s3:// or local files
            urls = self.s3_media.resolve_inputs(urls, staging_uri=self.staging_s3_uri)
        return EditRequest.build(
            **{**fields, "image_urls": urls}, allow_insecure_inputs=self.hook.settings.allow_insecure_inputs
        )

    @cached_property
    def s3_media(self) -> S3MediaHook:
        from airflow_provider_nanobanana.media import S3MediaHook

        return S3MediaHook(
            self.aws_conn_id,
            presign_expiry_s=self.presign_expiry,
            allowed_output_hosts=self.hook.settings.allowed_output_hosts,
        )

    # -- execution --------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        fields = self.validate_inputs()
        if self.output_s3_uri:
            check_destination(
                self.output_s3_uri,
                self.s3_key_template or DEFAULT_KEY_TEMPLATE,
                fields_from_context(context),
                outputs=fields["num_images"],
            )
        work = fingerprint({**fields, "model_id": self.model_id})
        ledger = JobLedger.for_context(context)
        request_id = self._reattach(ledger, work)
        if request_id is None:
            request_id = self._submit(self._resolve_request(fields))
            ledger.record(request_id, work)
        self._request_id = request_id
        self._publish(context, request_id)

        watch = JobWatch(request_id, time.time() + self.timeout, self.policy)
        if not self.deferrable:
            return self._finish(context, wait_for_job(self.hook, watch))
        if (event := self._quick_look(watch)) is not None:
            return self._finish(context, event)
        self.log.info("Deferring: waiting for %s in the triggerer (timeout %.0fs)", request_id, self.timeout)
        self.defer(
            trigger=RunComfyJobTrigger(
                request_id=request_id,
                deadline_epoch_s=watch.deadline_epoch_s,
                runcomfy_conn_id=self.runcomfy_conn_id,
                poll_interval_s=self.poll_interval,
                poll_max_s=self.poll_max_interval,
                cancel_on_kill=self.cancel_on_kill,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + self.poll_max_interval + DEFERRAL_MARGIN_S),
        )

    def _quick_look(self, watch: JobWatch) -> JobEvent | None:
        """One look before deferring: edits often finish in seconds (a re-attached job may be done
        already), and a deferral that fires at once costs a triggerer round trip. A transient
        failure here is no reason to fail: the trigger has the patience for it."""
        try:
            if watch.on_status(self.hook.get_status(watch.request_id)):
                return watch.on_result(self.hook.get_result(watch.request_id))
        except (RunComfyTransientError, RunComfyRateLimitedError) as exc:
            self.log.info("Status check before deferring failed (%s); the trigger will keep polling", exc)
        return None

    def _reattach(self, ledger: JobLedger, work: str) -> str | None:
        """Reuse the earlier try's request unless it failed, was cancelled or is gone."""
        request_id = ledger.recall(work)
        if request_id is None:
            return None
        try:
            status = self.hook.get_status(request_id)
        except RunComfyNotFoundError:
            self.log.warning("Earlier request %s no longer exists; submitting anew", request_id)
            return None
        if status.status.is_active or status.status is JobState.COMPLETED:
            self.log.info(
                "Re-attaching to %s (%s) from an earlier try; not submitting again",
                request_id,
                status.status.value,
            )
            return request_id
        self.log.info("Earlier request %s ended %s; submitting anew", request_id, status.status.value)
        return None

    def _submit(self, request: EditRequest) -> str:
        try:
            response = self.hook.submit(request)
        except RunComfySubmitUnknownError as exc:
            raise _no_retry(exc) from exc
        self.log.info(
            "Submitted %s to %s: request %s", self.model_id, self.hook.settings.base_url, response.request_id
        )
        return response.request_id

    def _publish(self, context: Context, request_id: str) -> None:
        """XCom the id and link right away, so they exist even if the task dies while waiting."""
        ti = context["ti"]
        ti.xcom_push(key=REQUEST_ID_XCOM_KEY, value=request_id)
        ti.xcom_push(key=REQUEST_URL_XCOM_KEY, value=self.hook.request_url(request_id, Endpoint.STATUS))

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if event is None:
            raise RunComfyError("the RunComfy trigger fired without an event; the job outcome is unknown")
        return self._finish(context, JobEvent.model_validate(event))

    # -- outcome policy (shared by the deferred and the in-place paths) ---------------------------
    def _finish(self, context: Context, event: JobEvent) -> dict[str, Any]:
        self._request_id = event.request_id
        if event.status == "timeout":
            self._cancel_quietly(event.request_id)
        raise_for_event(event)
        return self._complete(context, event.request_id)

    def _complete(self, context: Context, request_id: str) -> dict[str, Any]:
        # The event carries redacted URLs only; fetch the usable ones now, on the worker.
        result = self.hook.get_result(request_id)
        images = result.images
        archived: dict[str, Any] = {"archived": [], "manifest": None}
        if self.output_s3_uri:
            archived = self._archive(context, request_id, images, self.output_s3_uri)
        self._archived = archived["archived"]
        self._emit_asset_event(context, request_id, archived)
        JobLedger.for_context(context).forget()
        self.log.info(
            "%s completed with %d image(s)%s",
            request_id,
            len(images),
            f", archived to {self.output_s3_uri}" if self.output_s3_uri else "",
        )
        return {
            "request_id": request_id,
            "status": JobState.COMPLETED.value,
            "model_id": self.model_id,
            "images": [redact_url(u) for u in images],
            **archived,
        }

    def _archive(self, context: Context, request_id: str, images: list[str], dest_uri: str) -> dict[str, Any]:
        fields = self.edit_fields()
        result = self.s3_media.archive_outputs(
            images,
            request_id=request_id,
            dest_uri=dest_uri,
            key_template=self.s3_key_template or DEFAULT_KEY_TEMPLATE,
            fields=fields_from_context(context),
            model_id=self.model_id,
            prompt=fields["prompt"],
            seed=fields["seed"],
            inputs=fields["image_urls"],
            parameters={k: v for k, v in fields.items() if k != "image_urls"},
        )
        return {"archived": result.s3_uris, "manifest": result.manifest_uri}

    def _emit_asset_event(self, context: Context, request_id: str, archived: Mapping[str, Any]) -> None:
        """Attach what was archived to the output Asset's event (seen by asset-scheduled DAGs)."""
        asset = output_asset(self.output_s3_uri)
        events = context.get("outlet_events")
        if asset is None or events is None or asset not in (self.outlets or []) or not archived["archived"]:
            return
        events[asset].extra = {
            "request_id": request_id,
            "archived": archived["archived"],
            "manifest": archived["manifest"],
        }

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the ``s3://`` inputs produced the archived ``s3://`` outputs."""
        return openlineage_facets(self.edit_fields()["image_urls"], self._archived)

    def _cancel_quietly(self, request_id: str) -> None:
        asyncio.run(cancel_if_queued(self.hook, request_id, log=self.log))

    def on_kill(self) -> None:
        """Runs for a task killed while executing on the worker (not while deferred before 3.3)."""
        if self.cancel_on_kill and self._request_id:
            self._cancel_quietly(self._request_id)
