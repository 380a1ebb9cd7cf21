"""Edit thousands of images in one task: one trigger, bounded concurrency, resumable, pay once.

The worker builds and validates the item list, writes (or resumes) the S3 checkpoint and defers to
:class:`RunComfyBatchTrigger`. When the trigger is done the worker archives every completed item's
outputs with a small thread pool (streamed, so memory does not grow with the batch), writes a
manifest, applies the failure policy and returns a compact summary: never thousands of URLs in XCom.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_nanobanana.batch.checkpoint import BatchCheckpoint
from airflow_provider_nanobanana.batch.state import BatchEvent, BatchItem, BatchState, ItemState, summary
from airflow_provider_nanobanana.batch.trigger import RunComfyBatchTrigger
from airflow_provider_nanobanana.exceptions import ArchiveError, RunComfyError, RunComfyJobFailedError
from airflow_provider_nanobanana.media.keys import fields_from_context, parse_s3_prefix, sanitize_key_field
from airflow_provider_nanobanana.media.quality import BadOutputError, OnBadOutput
from airflow_provider_nanobanana.models import EditRequest, EventStatus
from airflow_provider_nanobanana.operators.base import NanoBananaBaseOperator
from airflow_provider_nanobanana.outcome import deferral_timeout
from airflow_provider_nanobanana.report.link import ContactSheetLink
from airflow_provider_nanobanana.report.publish import publish_batch_report
from airflow_provider_nanobanana.spend.budget import OnBudgetExhausted, batch_ledger, reservation_key
from airflow_provider_nanobanana.spend.preflight import preflight_spend
from airflow_provider_nanobanana.spend.pricing import as_usd
from airflow_provider_nanobanana.spend.reuse import remember, reuse_batch_items

if TYPE_CHECKING:
    from airflow.sdk import Context

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


class NanoBananaBatchEditOperator(NanoBananaBaseOperator):
    """Run one ``google/nano-banana-2/edit`` job per item, many items per task.

    Takes every parameter of :class:`~airflow_provider_nanobanana.operators.base.NanoBananaBaseOperator`
    (the model's parameters, connections, polling, ``min_deferral``). Items come from ``items`` (a
    list of URLs/URIs, or dicts ``{"image_urls": [...], "prompt": ..., "id": ...}``; templated, so an
    XCom works) or from every image under ``input_s3_prefix``. The ``prompt`` may use ``{name}`` (file
    name without extension) and ``{key}`` (object key) per item.

    :param items: the edits, when not listing a prefix: URLs/``s3://`` URIs or dicts (templated).
    :param input_s3_prefix: ``s3://bucket/prefix/``: one item per image object below it.
    :param output_s3_uri: where outputs, the per-request manifests, the batch manifest and the
        resumable checkpoint (``_batch/state.json``) go, below ``{dag_id}/{run_id}/{task_id}/{map_index}``.
    :param max_in_flight: most jobs queued or running at RunComfy at once for this batch.
    :param rate_per_s: client-side limit on this batch's API calls per second.
    :param item_retries: resubmissions of an item whose job *failed* (never of an ambiguous submit).
    :param max_failed_fraction: fail the task when more than this share of items failed
        (0 = any failure fails the task, 1 = never). Completed outputs that could not be archived
        always fail the task: nothing is lost silently.
    :param timeout: seconds for the whole batch.
    :param archive_concurrency: outputs archived in parallel once the trigger is done.
    """

    template_fields: Sequence[str] = ("prompt", "items", "input_s3_prefix", "output_s3_uri")
    template_fields_renderers = {"prompt": "md", "items": "json"}
    ui_color = "#ffd000"
    operator_extra_links = (ContactSheetLink(),)

    def __init__(
        self,
        *,
        output_s3_uri: str,
        items: Sequence[Any] | str | None = None,
        input_s3_prefix: str | None = None,
        max_in_flight: int = 16,
        rate_per_s: float = 10.0,
        item_retries: int = 1,
        max_failed_fraction: float = 0.0,
        archive_concurrency: int = 4,
        timeout: float = 6 * 3600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(timeout=timeout, **kwargs)
        if (items is None) == (input_s3_prefix is None):
            raise ValueError("give exactly one of items= or input_s3_prefix=")
        if not 0 <= max_failed_fraction <= 1:
            raise ValueError(f"max_failed_fraction must be between 0 and 1, got {max_failed_fraction}")
        if max_in_flight < 1 or not 0 < rate_per_s < math.inf or item_retries < 0 or archive_concurrency < 1:
            raise ValueError(
                "max_in_flight and archive_concurrency must be >= 1, rate_per_s > 0, item_retries >= 0"
            )
        self.items = items
        self.input_s3_prefix = input_s3_prefix
        self.output_s3_uri = output_s3_uri
        self.max_in_flight = max_in_flight
        self.rate_per_s = rate_per_s
        self.item_retries = item_retries
        self.max_failed_fraction = max_failed_fraction
        self.archive_concurrency = archive_concurrency

    def _checkpoint(self, context: Context) -> BatchCheckpoint:
        bucket, prefix = parse_s3_prefix(self.output_s3_uri, what="output_s3_uri")
        where = "/".join(sanitize_key_field(v) for v in fields_from_context(context).values())
        return BatchCheckpoint(self.media.get_client(), bucket, f"{prefix}{where}")

    # -- items ------------------------------------------------------------------------------------
    def build_items(self) -> list[BatchItem]:
        """The batch's items, validated before anything is submitted (bad input fails the task here)."""
        raw = self._listed_items() if self.input_s3_prefix else self._given_items()
        items = [self._item(entry) for entry in raw]
        if not items:
            raise ValueError(f"the batch has no items (input_s3_prefix={self.input_s3_prefix!r})")
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise ValueError("batch item ids must be unique")
        allow_insecure = self.hook.settings.allow_insecure_inputs
        for item in items:
            EditRequest.build(
                **self.model_parameters(),
                prompt=item.prompt,
                image_urls=item.image_urls,
                allow_insecure_inputs=allow_insecure,
                allow_unresolved=True,
            )
        return items

    def _given_items(self) -> list[Mapping[str, Any]]:
        items = self.items
        if isinstance(items, str):
            raise ValueError("items must be a list (of URLs or of {'image_urls': [...]} dicts), got a string")
        return [entry if isinstance(entry, Mapping) else {"image_urls": [entry]} for entry in items or []]

    def _listed_items(self) -> list[Mapping[str, Any]]:
        bucket, prefix = parse_s3_prefix(self.input_s3_prefix or "", what="input_s3_prefix")
        paginator = self.media.get_client().get_paginator("list_objects_v2")
        keys = [
            obj["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
            if PurePosixPath(obj["Key"]).suffix.lower() in IMAGE_SUFFIXES
        ]
        return [{"id": key, "image_urls": [f"s3://{bucket}/{key}"], "key": key} for key in sorted(keys)]

    def _item(self, entry: Mapping[str, Any]) -> BatchItem:
        urls = entry.get("image_urls")
        urls = [urls] if isinstance(urls, str) else list(urls or [])
        key = str(entry.get("key") or (urls[0] if urls else ""))
        name = PurePosixPath(key.split("?", 1)[0]).stem
        prompt = str(entry.get("prompt") or self.prompt).replace("{name}", name).replace("{key}", key)
        item_id = str(entry.get("id") or hashlib.sha256(repr((urls, prompt)).encode()).hexdigest()[:16])
        return BatchItem(id=item_id, image_urls=urls, prompt=prompt)

    # -- execution --------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        items = self.build_items()
        checkpoint = self._checkpoint(context)
        state = checkpoint.load()
        if state is None:
            state = BatchState(
                batch_id=checkpoint.prefix,
                model_id=self.model_id,
                parameters=self.model_parameters(),
                items=items,
                generation=1,
            )
        else:
            self.log.info("Resuming batch from %s: %s", checkpoint.uri, state.counts())
            # A new generation: a trigger left over from an earlier try stops writing and submitting.
            state.generation += 1
            state.merge_items(items)
            for item in state.in_state(ItemState.FAILED, ItemState.CANCELLED):
                item.attempts, item.request_id = 0, None  # a task retry retries them
                item.move(ItemState.PENDING, error=item.error)
            for item in state.in_state(ItemState.SKIPPED_BUDGET):  # the ledger decides again (unpaid)
                item.move(ItemState.PENDING)
        if self.reuse_outputs:  # edits already archived under output_s3_uri are copied, not paid for
            reuse_batch_items(
                self.media,
                self.output_s3_uri,
                state.items,
                model_id=self.model_id,
                parameters=self.model_parameters(),
                fields=fields_from_context(context),
            )
        state = checkpoint.save(state)
        if all(item.state.is_final for item in state.items):
            return self._finish(context, checkpoint, None)
        self._defer_batch(checkpoint, state)

    def _defer_batch(self, checkpoint: BatchCheckpoint, state: BatchState) -> NoReturn:
        """Hand the pending items to the trigger (it claims, reserves budget and pays for each)."""
        price = preflight_spend(
            self.hook,
            limits=self.budget,
            requests=len(state.in_state(ItemState.PENDING)),
            num_images=self.num_images,
            on_exhausted=self.on_budget_exhausted,
        )
        self.log.info("Deferring batch of %d items (max %d in flight)", len(state.items), self.max_in_flight)
        self.defer(
            trigger=RunComfyBatchTrigger(
                checkpoint_bucket=checkpoint.bucket,
                checkpoint_prefix=checkpoint.prefix,
                deadline_epoch_s=time.time() + self.timeout,
                runcomfy_conn_id=self.runcomfy_conn_id,
                aws_conn_id=self.aws_conn_id,
                model_id=self.model_id,
                max_in_flight=self.max_in_flight,
                rate_per_s=self.rate_per_s,
                item_retries=self.item_retries,
                poll_interval_s=self.poll_interval,
                poll_max_s=self.poll_max_interval,
                presign_expiry_s=self.presign_expiry,
                release_not_before_epoch_s=time.time() + self.min_deferral_s(),
                price_per_request_usd=price,
                **self.budget.as_kwargs(),
            ),
            method_name="execute_complete",
            timeout=deferral_timeout(self.timeout, self.poll_max_interval),
        )

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if event is None:
            raise RunComfyError("the batch trigger fired without an event; the batch outcome is unknown")
        return self._finish(context, self._checkpoint(context), BatchEvent.model_validate(event))

    # -- finishing --------------------------------------------------------------------------------
    def _finish(
        self, context: Context, checkpoint: BatchCheckpoint, event: BatchEvent | None
    ) -> dict[str, Any]:
        state = checkpoint.load()
        if state is None:
            raise RunComfyError(f"batch checkpoint {checkpoint.uri} disappeared")
        state, missing = self._archive_completed(context, state, checkpoint)
        if state.in_state(ItemState.PENDING) and (event is None or event.status is EventStatus.SUCCESS):
            self._defer_batch(checkpoint, state)  # on_bad_output="resubmit": the trigger pays again
        manifest = checkpoint.write_manifest(state, {"output_s3_uri": self.output_s3_uri})
        result = {**summary(state), "manifest": manifest, "checkpoint": checkpoint.uri}
        result["reused"] = sum(1 for item in state.items if item.reused_from)
        result["report"] = publish_batch_report(context, self.media, state, manifest_uri=manifest)
        self.log.info("Batch finished: %s; manifest %s", state.counts(), manifest)
        if event is not None and event.status is not EventStatus.SUCCESS:
            raise RunComfyError(
                f"batch ended with {event.status.value}: {event.message}; {state.counts()} ({manifest})"
            )
        skipped = state.in_state(ItemState.SKIPPED_BUDGET)
        if skipped and self.on_budget_exhausted is OnBudgetExhausted.FAIL:
            raise RunComfyError(
                f"{len(skipped)} item(s) were over the spend budget ({self.budget.as_kwargs()}) and "
                f"were not submitted; on_budget_exhausted='fail' ({manifest})"
            )
        if missing:
            raise ArchiveError(
                f"{len(missing)} completed item(s) could not be archived: {'; '.join(missing[:10])}"
            )
        total = len(state.items)
        failed = result["failed"]
        if failed and failed / total > self.max_failed_fraction:
            examples = "; ".join(f"{i.id}: {i.error}" for i in state.items if not i.state.is_success)
            allowed = self.max_failed_fraction
            raise RunComfyJobFailedError(
                f"{failed} of {total} items failed (allowed fraction {allowed}): {examples[:1500]}",
                request_id=state.batch_id,
            )
        return result

    def _archive_completed(
        self, context: Context, state: BatchState, checkpoint: BatchCheckpoint
    ) -> tuple[BatchState, list[str]]:
        todo = state.in_state(ItemState.COMPLETED)
        if todo:
            self.log.info(
                "Archiving outputs of %d item(s), %d at a time", len(todo), self.archive_concurrency
            )
        fields = fields_from_context(context)

        def archive(item: BatchItem) -> str | None:
            try:
                assert item.request_id is not None
                answer = self.hook.get_result(item.request_id)
                item.cost_usd = as_usd(answer.cost)
                gate = self.quality_gate(paid_requests=1 + item.resubmits)
                result = self.archive_edit(
                    answer.images,  # the gate judges an empty or short list itself
                    request_id=item.request_id,
                    dest_uri=self.output_s3_uri,
                    fields=fields,
                    prompt=item.prompt,
                    inputs=item.image_urls,
                    fingerprint=item.fingerprint,
                    quality=gate,
                    cost_usd=item.cost_usd,
                )
                if not gate.flagged:  # a flagged output kept under "keep" must never be reused as clean
                    remember(self.media, self.output_s3_uri, item.fingerprint, result)
            except BadOutputError as exc:
                self._bad_item(item, exc)
                return None  # not lost: failed_quality, or pending to be paid for again
            except (RunComfyError, OSError) as exc:
                item.error = str(exc)[:500]
                return f"{item.id} ({item.request_id}): {exc}"
            item.archived, item.manifest, item.quality = result.s3_uris, result.manifest_uri, gate.flagged
            item.move(ItemState.ARCHIVED)
            return None

        with ThreadPoolExecutor(max_workers=self.archive_concurrency) as pool:
            missing = [m for m in pool.map(archive, todo) if m]
        saved = checkpoint.save(state)  # the archived items are recorded before any spend bookkeeping
        ledger = batch_ledger(checkpoint, self.budget)
        if ledger is not None and todo:  # reported costs replace the list-price estimates (one PUT)
            try:
                ledger.settle({reservation_key(i.id, i.claims): i.cost_usd for i in todo})
            except Exception as exc:  # noqa: BLE001 - the ledger keeps the estimates: errs on the safe side
                self.log.warning(
                    "Could not record the reported costs in the spend ledger (%s: %s); it keeps the "
                    "list-price estimates",
                    type(exc).__name__,
                    exc,
                )
        return saved, missing

    def _bad_item(self, item: BatchItem, bad: BadOutputError) -> None:
        """An item whose outputs the quality gate rejected: pending again (``resubmit``) or ``failed_quality``."""
        item.quality = bad.problems
        if self.on_bad_output is OnBadOutput.RESUBMIT and item.resubmits < self.max_resubmits:
            item.resubmits += 1
            self.log.warning(
                "Paying again: item %s (request %s) failed the quality gate (%s); resubmitting it "
                "(resubmit %d of at most %d)",
                item.id,
                item.request_id,
                "; ".join(f"{k}: {v}" for k, v in bad.problems.items()),
                item.resubmits,
                self.max_resubmits,
            )
            item.move(ItemState.PENDING, error=f"resubmitted: {bad}")
        else:
            item.move(ItemState.FAILED_QUALITY, error=str(bad))
