"""Edit images with ``google/nano-banana-2/edit``: submit on the worker, wait in the triggerer.

One task, one paid request:

1. validate every input before any network call;
2. on a retry, re-attach to the request an earlier try submitted if it is queued, running or
   completed (never a second POST for the same work);
3. otherwise resolve ``s3://`` inputs to pre-signed URLs and submit once;
4. remember the request id (XCom for links, the job ledger for retries) before waiting;
5. defer to :class:`RunComfyJobTrigger` (or wait in place with ``deferrable=False``);
6. on completion archive every output to S3 through the quality gate, or fail saying which outputs
   are missing or bad (``on_bad_output="resubmit"`` pays for a new request instead, up to
   ``max_resubmits`` times).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_nanobanana._compat import AirflowFailException
from airflow_provider_nanobanana.config import WAIT_BEFORE_DEFER_S
from airflow_provider_nanobanana.exceptions import (
    RunComfyError,
    RunComfyNotFoundError,
    RunComfySubmitUnknownError,
)
from airflow_provider_nanobanana.hooks.runcomfy import Endpoint
from airflow_provider_nanobanana.lineage import openlineage_facets, output_asset
from airflow_provider_nanobanana.links import (
    REQUEST_CONN_ID_XCOM_KEY,
    REQUEST_ID_XCOM_KEY,
    REQUEST_URL_XCOM_KEY,
    RunComfyRequestLink,
)
from airflow_provider_nanobanana.media.keys import (
    DEFAULT_KEY_TEMPLATE,
    check_destination,
    fields_from_context,
    parse_s3_prefix,
)
from airflow_provider_nanobanana.media.quality import BadOutputError, OnBadOutput, QualityGate
from airflow_provider_nanobanana.models import (
    EditRequest,
    EventStatus,
    JobEvent,
    JobState,
    StatusResponse,
)
from airflow_provider_nanobanana.operators.base import NanoBananaBaseOperator
from airflow_provider_nanobanana.outcome import (
    check_seconds,
    completed_outputs,
    deferral_timeout,
    raise_for_event,
)
from airflow_provider_nanobanana.polling import JobWatch, wait_for_job
from airflow_provider_nanobanana.preparation import prepare_request
from airflow_provider_nanobanana.reattach import JobLedger, fingerprint
from airflow_provider_nanobanana.redaction import redact_url
from airflow_provider_nanobanana.spend.fingerprint import edit_fingerprint
from airflow_provider_nanobanana.spend.pricing import as_usd
from airflow_provider_nanobanana.spend.reuse import ReuseIndex, find_reusable, remember
from airflow_provider_nanobanana.spend.single import (
    SingleEditBudget,
    check_budget_location,
    reserve_or_skip,
    settle_cost,
    spend_budget,
)
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


#: XCom key of the edit's content fingerprint, kept from ``execute`` for the archive (reuse_outputs).
FINGERPRINT_XCOM_KEY = "nanobanana_fingerprint"


def _no_retry(exc: Exception) -> Exception:
    """Wrap ``exc`` so Airflow fails the task without retrying (a retry could pay twice)."""
    return AirflowFailException(str(exc))


class NanoBananaEditOperator(NanoBananaBaseOperator):
    """Edit images with RunComfy's ``google/nano-banana-2/edit`` model: one paid request per task.

    Takes every parameter of :class:`~airflow_provider_nanobanana.operators.base.NanoBananaBaseOperator`
    (``prompt``, the model's parameters, connections, polling, ``min_deferral``) and:

    :param image_urls: 1-20 ``https://`` URLs, ``s3://`` URIs or (with ``staging_s3_uri``) local files.
    :param timeout: seconds to wait for the job before cancelling it (if still queued) and failing.
    :param deferrable: wait in the triggerer (default; frees the worker slot). ``False`` waits on
        the worker, for deployments without a triggerer.
    :param wait_before_defer: seconds the worker keeps polling after submitting before it defers;
        a job that finishes in that window never defers. ``None`` reads ``[nanobanana]
        wait_before_defer_s`` (default 10). ``0`` polls once, then defers.
    :param cancel_on_kill: cancel the job (if still queued) when the task is killed, marked
        failed or cleared while it waits; RunComfy cannot cancel a running job.
    :param staging_s3_uri: ``s3://bucket/prefix/`` where local-file inputs are uploaded (by content
        hash) before being pre-signed; without it local paths are refused.
    :param output_s3_uri: ``s3://bucket/prefix/``; when set, every output is archived there with a
        JSON manifest, and the task fails if any output cannot be archived.
    :param s3_key_template: key of each archived image below ``output_s3_uri``.
    :param budget_key: with ``max_paid_requests``/``max_spend_usd``: the name of the budget this task
        spends from, shared per DAG run by every task (and map index) that gives the same key
        (default: the task id, so one mapped task's fleet shares one budget).
    :param budget_s3_uri: ``s3://bucket/prefix/`` of the spend ledger (default: ``output_s3_uri``).

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
        image_urls: list[str] | str,
        timeout: float = 3600.0,
        deferrable: bool = True,
        wait_before_defer: float | None = None,
        cancel_on_kill: bool = True,
        output_s3_uri: str | None = None,
        staging_s3_uri: str | None = None,
        s3_key_template: str | None = None,
        budget_key: str | None = None,
        budget_s3_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(timeout=timeout, **kwargs)
        check_budget_location(self.budget, budget_s3_uri, output_s3_uri)
        self.check_archive_settings(output_s3_uri, budget_s3_uri)
        self.budget_key = budget_key
        self.budget_s3_uri = budget_s3_uri
        self.image_urls = image_urls
        self.deferrable = deferrable
        self.wait_before_defer = check_seconds("wait_before_defer", wait_before_defer)
        self.cancel_on_kill = cancel_on_kill
        self.output_s3_uri = output_s3_uri
        self.staging_s3_uri = staging_s3_uri
        self.s3_key_template = s3_key_template
        self._request_id: str | None = None
        self._archived: list[str] = []
        asset = output_asset(output_s3_uri)
        if asset is not None and not kwargs.get("outlets"):
            self.outlets = [asset]  # downstream DAGs can be scheduled on newly archived images

    # -- inputs -----------------------------------------------------------------------------------
    def edit_fields(self) -> dict[str, Any]:
        """The model input as the user gave it (after templating), before ``s3://`` resolution."""
        urls = self.image_urls
        if isinstance(urls, str):  # a single URL, or a template that rendered to one
            urls = [urls]
        return {
            "prompt": self.prompt,
            "image_urls": list(urls) if isinstance(urls, (list, tuple)) else urls,
            **self.model_parameters(),
        }

    def validate_inputs(self) -> dict[str, Any]:
        """Fail fast, before any network call, with every bad field named."""
        fields = self.edit_fields()
        EditRequest.build(
            **fields, allow_insecure_inputs=self.hook.settings.allow_insecure_inputs, allow_unresolved=True
        )
        if self.staging_s3_uri:
            parse_s3_prefix(self.staging_s3_uri, what="staging_s3_uri")
        return fields

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
        request_id, status, paid = self._reattach(ledger, work)
        if request_id is None:
            if (reused := self._reuse(context, fields)) is not None:
                return reused
            request = prepare_request(
                fields,
                media=self.media,
                allow_insecure_inputs=self.hook.settings.allow_insecure_inputs,
                staging_uri=self.staging_s3_uri,
            )
            if (skipped := reserve_or_skip(self, context)) is not None:
                return skipped
            request_id = self._submit(request, spend_budget(self, context))
            ledger.record(request_id, work)
        return self._watch(context, request_id, status, paid)

    def _watch(
        self, context: Context, request_id: str, status: StatusResponse | None, paid_requests: int = 1
    ) -> dict[str, Any]:
        """Publish the request, wait for it here for a while, then defer (or finish if it ended)."""
        self._request_id = request_id
        self._publish(context, request_id)
        watch = JobWatch(request_id, time.time() + self.timeout, self.policy)
        event = watch.on_status(status) if status is not None else None
        if event is None:
            # Most edits finish in seconds: a job that ends while the worker still watches never
            # defers, so Airflow's defer-exit race cannot touch it (see docs/reliability.md).
            give_up_at = time.time() + self._wait_before_defer() if self.deferrable else None
            event = wait_for_job(self.hook, watch, give_up_at_epoch_s=give_up_at)
        if event is None:
            self._defer(watch, paid_requests)
        return self._finish(context, event, paid_requests)

    def _defer(self, watch: JobWatch, paid_requests: int = 1) -> NoReturn:
        self.log.info(
            "Deferring: waiting for %s in the triggerer (timeout %.0fs)", watch.request_id, self.timeout
        )
        self.defer(
            trigger=RunComfyJobTrigger(
                request_id=watch.request_id,
                deadline_epoch_s=watch.deadline_epoch_s,
                runcomfy_conn_id=self.runcomfy_conn_id,
                poll_interval_s=self.poll_interval,
                poll_max_s=self.poll_max_interval,
                cancel_on_kill=self.cancel_on_kill,
                release_not_before_epoch_s=time.time() + self.min_deferral_s(),
            ),
            method_name="execute_complete",
            # Resubmits so far survive the deferral; a first request adds nothing to the kwargs.
            kwargs={"paid_requests": paid_requests} if paid_requests > 1 else None,
            timeout=deferral_timeout(self.timeout, self.poll_max_interval),
        )

    def _wait_before_defer(self) -> float:
        return WAIT_BEFORE_DEFER_S.resolve(self.wait_before_defer)

    def _reattach(self, ledger: JobLedger, work: str) -> tuple[str | None, StatusResponse | None, int]:
        """Reuse the earlier try's request unless it failed, was cancelled or is gone.

        Returns the status it read, so the wait that follows does not ask for it again, and how many
        requests the edit has paid for (quality-gate resubmits keep counting across tries).
        """
        request_id, paid = ledger.recall_paid(work)
        if request_id is None:
            return None, None, 1
        try:
            status = self.hook.get_status(request_id)
        except RunComfyNotFoundError:
            self.log.warning("Earlier request %s no longer exists; submitting anew", request_id)
            return None, None, 1
        if status.status.is_active or status.status is JobState.COMPLETED:
            self.log.info(
                "Re-attaching to %s (%s) from an earlier try; not submitting again",
                request_id,
                status.status.value,
            )
            return request_id, status, paid
        self.log.info("Earlier request %s ended %s; submitting anew", request_id, status.status.value)
        return None, None, 1

    def _submit(self, request: EditRequest, budget: SingleEditBudget | None = None, paid: int = 1) -> str:
        try:
            response = self.hook.submit(request)
        except RunComfySubmitUnknownError as exc:
            raise _no_retry(exc) from exc
        except RunComfyError:
            if budget is not None:  # any other error: provably no job, so no charge
                budget.release(paid)
            raise
        self.log.info(
            "Submitted %s to %s: request %s", self.model_id, self.hook.settings.base_url, response.request_id
        )
        return response.request_id

    def _publish(self, context: Context, request_id: str) -> None:
        """XCom the id and link right away, so they exist even if the task dies while waiting."""
        ti = context["ti"]
        ti.xcom_push(key=REQUEST_ID_XCOM_KEY, value=request_id)
        ti.xcom_push(key=REQUEST_CONN_ID_XCOM_KEY, value=self.runcomfy_conn_id)  # for the request page
        ti.xcom_push(key=REQUEST_URL_XCOM_KEY, value=self.hook.request_url(request_id, Endpoint.STATUS))

    def execute_complete(
        self, context: Context, event: Mapping[str, Any] | None = None, paid_requests: int = 1
    ) -> dict[str, Any]:
        if event is None:
            raise RunComfyError("the RunComfy trigger fired without an event; the job outcome is unknown")
        return self._finish(context, JobEvent.model_validate(event), paid_requests)

    # -- outcome policy (shared by the deferred and the in-place paths) ---------------------------
    def _finish(self, context: Context, event: JobEvent, paid_requests: int = 1) -> dict[str, Any]:
        self._request_id = event.request_id
        if event.status is EventStatus.TIMEOUT:
            self.hook.cancel_if_queued(event.request_id)
        raise_for_event(event)
        return self._complete(context, event.request_id, paid_requests)

    def _complete(self, context: Context, request_id: str, paid_requests: int = 1) -> dict[str, Any]:
        # The verdict carries no outputs: the result is fetched here, once, where it is archived.
        result = self.hook.get_result(request_id)
        cost_usd = as_usd(result.cost)
        archived: dict[str, Any] = {"archived": [], "manifest": None}
        if self.output_s3_uri:
            images = result.images  # the gate judges an empty or short list itself
            gate = self.quality_gate(paid_requests)
            bad: BadOutputError | None = None
            try:
                archived = self._archive(context, request_id, images, self.output_s3_uri, gate, cost_usd)
            except BadOutputError as exc:
                bad = exc
            finally:  # the outputs first: settling the ledger is best effort and never raises
                settle_cost(self, context, result.cost, paid_requests)
            if bad is not None:
                return self._resubmit(context, bad, paid_requests)
            archived.update(quality=gate.flagged, paid_requests=paid_requests)
        else:
            settle_cost(self, context, result.cost, paid_requests)
            images = completed_outputs(result)
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
            # What RunComfy reported the job cost (USD), when it did (``result?include_cost=true``).
            **({"cost_usd": cost_usd} if cost_usd is not None else {}),
        }

    def _archive(
        self,
        context: Context,
        request_id: str,
        images: list[str],
        dest_uri: str,
        gate: QualityGate,
        cost_usd: float | None = None,
    ) -> dict[str, Any]:
        edit = self._fingerprint(context)
        result = self.archive_edit(
            images,
            request_id=request_id,
            dest_uri=dest_uri,
            fields=fields_from_context(context),
            prompt=self.prompt,
            inputs=self.edit_fields()["image_urls"],
            key_template=self.s3_key_template,
            quality=gate,
            fingerprint=edit,
            cost_usd=cost_usd,
        )
        if not gate.flagged:  # outputs kept despite the gate are never handed to another run
            remember(self.media, dest_uri, edit, result)
        return {"archived": result.s3_uris, "manifest": result.manifest_uri, "reused": False}

    # -- content-addressed reuse (spend/reuse.py) -------------------------------------------------
    def _reuse(self, context: Context, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        """``reuse_outputs``: copy the outputs of the same edit archived under ``output_s3_uri``, unpaid."""
        if not (self.reuse_outputs and self.output_s3_uri):
            return None
        edit, entry = find_reusable(
            self.media,
            self.output_s3_uri,
            model_id=self.model_id,
            parameters=self.model_parameters(),
            prompt=fields["prompt"],
            image_urls=fields["image_urls"],
        )
        self._edit_fingerprint = edit
        context["ti"].xcom_push(key=FINGERPRINT_XCOM_KEY, value=edit)  # for the archive after deferral
        if entry is None:
            return None
        result = ReuseIndex(self.media.get_client(), self.output_s3_uri).copy_into_run(
            entry,
            fields=fields_from_context(context),
            key_template=self.s3_key_template,
            prompt=fields["prompt"],
            inputs=fields["image_urls"],
            parameters={**self.model_parameters(), "prompt": fields["prompt"]},
        )
        archived = {"archived": result.s3_uris, "manifest": result.manifest_uri}
        self._archived = result.s3_uris
        self._emit_asset_event(context, entry.request_id, archived)
        return {
            "request_id": entry.request_id,
            "status": JobState.COMPLETED.value,
            "model_id": self.model_id,
            "images": [],
            **archived,
            "reused": True,
            "reused_from": entry.reused_from,
        }

    def _fingerprint(self, context: Context) -> str | None:
        """The fingerprint ``execute`` computed (XCom: this may run in a later, resumed process)."""
        if not self.reuse_outputs:
            return None
        if (known := getattr(self, "_edit_fingerprint", None)) is not None:
            return str(known)
        ti = context["ti"]
        value = ti.xcom_pull(task_ids=ti.task_id, key=FINGERPRINT_XCOM_KEY, map_indexes=ti.map_index)
        if isinstance(value, str):
            return value
        # A retry that re-attached never ran ``_reuse`` and Airflow cleared the XCom: hash the inputs.
        fields, params = self.edit_fields(), self.model_parameters()
        try:
            return edit_fingerprint(
                self.media,
                model_id=self.model_id,
                parameters=params,
                prompt=fields["prompt"],
                image_urls=fields["image_urls"],
            )
        except Exception as exc:  # noqa: BLE001 - the index is an optimisation; the paid outputs matter
            self.log.warning("Not indexing the archive for reuse: cannot hash the inputs (%s)", exc)
            return None

    def _resubmit(self, context: Context, bad: BadOutputError, paid_requests: int) -> dict[str, Any]:
        """``on_bad_output="resubmit"``: pay for the same edit again, at most ``max_resubmits`` times."""
        if self.on_bad_output is not OnBadOutput.RESUBMIT:
            raise bad
        if paid_requests > self.max_resubmits:  # resubmits used up: a retry would only pay again
            raise _no_retry(bad) from bad
        self.log.warning(
            "Paying again: request %s failed the quality gate (%s); submitting paid request %d of at "
            "most %d (max_resubmits=%d)",
            bad.request_id,
            "; ".join(f"{k}: {v}" for k, v in bad.problems.items()),
            paid_requests + 1,
            self.max_resubmits + 1,
            self.max_resubmits,
        )
        fields = self.validate_inputs()
        request = prepare_request(
            fields,
            media=self.media,
            allow_insecure_inputs=self.hook.settings.allow_insecure_inputs,
            staging_uri=self.staging_s3_uri,
        )
        # A new paid request: it is reserved in the run's spend budget (when one is set) like the first.
        if (skipped := reserve_or_skip(self, context, paid=paid_requests + 1)) is not None:
            return skipped
        request_id = self._submit(request, spend_budget(self, context), paid=paid_requests + 1)
        # A retry of this task re-attaches to the newest request, never to the rejected one.
        work = fingerprint({**fields, "model_id": self.model_id})
        JobLedger.for_context(context).record(request_id, work, paid_requests + 1)
        return self._watch(context, request_id, None, paid_requests + 1)

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

    def on_kill(self) -> None:
        """Runs for a task killed while executing on the worker (not while deferred before 3.3)."""
        if self.cancel_on_kill and self._request_id:
            self.hook.cancel_if_queued(self._request_id)
