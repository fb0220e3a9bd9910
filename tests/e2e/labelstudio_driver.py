"""Drives a real Label Studio server with its SDK (label-studio-sdk), as a Label Studio user would.

Run by tests/e2e/test_labelstudio.py with the Python of Label Studio's own virtual environment
(label-studio pins packages of its own, so it does not share hrlm's): one JSON object in argv[2],
one JSON object out on stdout. Commands (argv[1]):

- ``connect``: create a text-classification project, connect hrlm as its ML backend (HTTP Basic: the
  password is an hrlm token), put hrlm's token on the webhook Label Studio made for the backend,
  import the tasks, and ask Label Studio for their predictions ("Retrieve predictions");
  prints the project, the backend, the task ids and each task's predictions.
- ``annotate``: create an annotation of a task through the API (Label Studio sends the webhook).
- ``train``: press "Start training" of the ML backend (``POST /api/ml/{id}/train``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from label_studio_sdk import LabelStudio


def connect(ls: LabelStudio, a: dict[str, Any]) -> dict[str, Any]:
    project = ls.projects.create(title="hrlm tickets", label_config=a["label_config"])
    backend = ls.ml.create(
        project=project.id,
        url=a["hrlm_url"] + "/labelstudio",
        title="hrlm",
        auth_method="BASIC_AUTH",
        basic_auth_user="labelstudio",
        basic_auth_pass=a["hrlm_token"],
        is_interactive=False,
    )
    hooks = [h for h in ls.webhooks.list(project=project.id) if str(h.url).endswith("/labelstudio/webhook")]
    for hook in hooks:
        ls.webhooks.update(hook.id, url=hook.url, headers={"Authorization": f"Bearer {a['hrlm_token']}"})
    ls.projects.import_tasks(id=project.id, request=[{"ticket": text} for text in a["texts"]])
    tasks = list(ls.tasks.list(project=project.id))
    ls.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []})
    predictions = {}
    for task in tasks:
        predictions[str(task.id)] = [
            {"model_version": p.model_version, "score": p.score, "result": p.result}
            for p in ls.predictions.list(task=task.id)
        ]
    return {
        "project": project.id,
        "backend": backend.id,
        "webhooks": len(hooks),
        "tasks": [{"id": t.id, "text": t.data["ticket"]} for t in tasks],
        "predictions": predictions,
    }


def annotate(ls: LabelStudio, a: dict[str, Any]) -> dict[str, Any]:
    result = [{"from_name": "category", "to_name": "text", "type": "choices", "value": {"choices": [a["label"]]}}]
    annotation = ls.annotations.create(id=a["task"], result=result)
    return {"annotation": annotation.id}


def train(ls: LabelStudio, a: dict[str, Any]) -> dict[str, Any]:
    ls.ml.train(id=a["backend"])
    return {"backend": a["backend"]}


if __name__ == "__main__":
    command, args = sys.argv[1], json.loads(sys.argv[2])
    client = LabelStudio(base_url=args["ls_url"], api_key=args["ls_token"])
    out = {"connect": connect, "annotate": annotate, "train": train}[command](client, args)
    print(json.dumps(out))
