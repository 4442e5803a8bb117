"""``mode: vllm-batch``: the Batch API's JSONL run by vLLM's offline batch runner on the cluster.

:class:`VLLMBatchRunner` offers the part of the OpenAI client that
:class:`~raygrade.bulk.batch_api.BatchApiRun` uses (``files.create/list/content``,
``batches.create/retrieve/list/cancel``), over local files in ``OUT/_batch_api/vllm/`` and one
Ray task per batch that runs ``vllm.entrypoints.openai.run_batch`` on a node with the model's
resources (a GPU node for a GPU model, one CPU bundle for the embedded model), so the same
plan, files, replay, rounds and resume serve both modes. The runner's output lines are the
Batch API's (``custom_id``, ``response.status_code``, ``response.body``).

A batch whose task was lost (the driver died while it ran, or the node went away) reads as
``failed`` with ``runner_lost`` and is run again with the same file: self-hosted work costs
no per-token price, and its grades are written once per item whatever runs twice.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from raygrade.config import LocalEngineConfig
from raygrade.selfhosted import ServedModelConfig


def _run_batch(data: bytes, model: dict[str, Any], engine: dict[str, Any] | None) -> bytes:
    """A Ray task: ``data`` (requests JSONL) through vLLM's batch runner; the output JSONL.

    Raises:
        RuntimeError: the runner exited with an error (its last output lines in the message).
    """
    import subprocess
    import tempfile

    cfg = ServedModelConfig.model_validate(model)
    if engine is not None:  # the embedded model: convert the packaged weights on this node first
        from raygrade.engine.local_vllm import prepare_model

        prepare_model(LocalEngineConfig.model_validate(engine))
    with tempfile.TemporaryDirectory(prefix="raygrade-vllm-batch-") as tmp:
        src, dst = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_bytes(data)
        proc = subprocess.run(cfg.batch_command(str(src), str(dst)), capture_output=True, text=True)
        if proc.returncode != 0 or not dst.exists():
            raise RuntimeError(f"vLLM's batch runner exited with {proc.returncode}: {proc.stderr[-2000:]}")
        return dst.read_bytes()


class VLLMBatchRunner:
    """The OpenAI client's files and batches, over vLLM's offline batch runner on the cluster.

    Args:
        root: Folder for the files and batch records (``OUT/_batch_api/vllm``).
        model: The model to run (its ``model_source`` on the node, engine arguments, resources).
        engine: For the embedded model: its settings (the task prepares the model folder first).
    """

    def __init__(self, root: Path, model: ServedModelConfig, engine: LocalEngineConfig | None = None):
        self.root, self.model, self.engine = root, model, engine
        (root / "files").mkdir(parents=True, exist_ok=True)
        (root / "batches").mkdir(parents=True, exist_ok=True)
        self._tasks: dict[str, Any] = {}
        self.files = SimpleNamespace(create=self._create_file, list=self._list_files, content=self._content)
        self.batches = SimpleNamespace(create=self._create_batch, retrieve=self._retrieve, list=self._list_batches,
                                       cancel=self._cancel)

    # -- files -------------------------------------------------------------------------------
    def _create_file(self, *, file: tuple[str, bytes], purpose: str) -> SimpleNamespace:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        (self.root / "files" / f"{fid}.jsonl").write_bytes(file[1])
        (self.root / "files" / f"{fid}.json").write_text(json.dumps({"id": fid, "filename": file[0],
                                                                      "purpose": purpose}))
        return SimpleNamespace(id=fid, filename=file[0], purpose=purpose)

    def _list_files(self, purpose: str | None = None) -> list[SimpleNamespace]:
        metas = [json.loads(p.read_text()) for p in sorted((self.root / "files").glob("*.json"))]
        return [SimpleNamespace(**m) for m in metas if purpose is None or m["purpose"] == purpose]

    def _content(self, file_id: str) -> SimpleNamespace:
        data = (self.root / "files" / f"{file_id}.jsonl").read_bytes()
        return SimpleNamespace(read=lambda: data, text=data.decode())

    # -- batches -----------------------------------------------------------------------------
    def _record(self, bid: str) -> dict[str, Any]:
        return json.loads((self.root / "batches" / f"{bid}.json").read_text())

    def _save(self, rec: dict[str, Any]) -> None:
        (self.root / "batches" / f"{rec['id']}.json").write_text(json.dumps(rec))

    def _create_batch(self, *, input_file_id: str, endpoint: str, completion_window: str,
                      metadata: dict[str, str] | None = None) -> SimpleNamespace:
        import ray

        data = (self.root / "files" / f"{input_file_id}.jsonl").read_bytes()
        bid = f"batch_{uuid.uuid4().hex[:24]}"
        task = ray.remote(_run_batch).options(**self.model.batch_task_options())
        self._tasks[bid] = task.remote(data, self.model.model_dump(mode="json"),
                                       self.engine.model_dump(mode="json") if self.engine else None)
        rec = {"id": bid, "input_file_id": input_file_id, "status": "in_progress", "output_file_id": None,
               "error": None, "total": data.count(b"\n"), "created_at": time.time()}
        self._save(rec)
        return self._batch(rec)

    def _retrieve(self, batch_id: str) -> SimpleNamespace:
        import ray

        rec = self._record(batch_id)
        if rec["status"] == "in_progress":
            ref = self._tasks.get(batch_id)
            if ref is None:  # started by an earlier driver: its task died with it
                rec.update(status="failed", error="runner_lost")
            elif ray.wait([ref], timeout=0)[0]:
                try:
                    out = ray.get(ref)
                except Exception as exc:  # the runner failed, or was cancelled
                    rec.update(status="cancelled" if isinstance(exc, ray.exceptions.TaskCancelledError) else
                               "failed", error=f"{type(exc).__name__}: {str(exc)[-300:]}")
                else:
                    rec.update(status="completed", output_file_id=self._create_file(
                        file=(f"{batch_id}_output.jsonl", out), purpose="batch_output").id)
            self._save(rec)
        return self._batch(rec)

    def _list_batches(self, limit: int = 100) -> list[SimpleNamespace]:
        recs = [json.loads(p.read_text()) for p in (self.root / "batches").glob("*.json")]
        return [self._batch(r) for r in sorted(recs, key=lambda r: -r["created_at"])[:limit]]

    def _cancel(self, batch_id: str) -> None:
        import ray

        if (ref := self._tasks.get(batch_id)) is not None:
            ray.cancel(ref, force=True)

    @staticmethod
    def _batch(rec: dict[str, Any]) -> SimpleNamespace:
        done = rec["status"] == "completed"
        code = rec["error"] if rec["error"] == "runner_lost" else "runner_failed"
        return SimpleNamespace(
            id=rec["id"], status=rec["status"], input_file_id=rec["input_file_id"],
            output_file_id=rec["output_file_id"], error_file_id=None,
            request_counts=SimpleNamespace(model_dump=lambda: {"total": rec["total"],
                                                               "completed": rec["total"] if done else 0,
                                                               "failed": 0}),
            errors=SimpleNamespace(data=[SimpleNamespace(code=code, message=rec["error"])]) if rec["error"] else None)
