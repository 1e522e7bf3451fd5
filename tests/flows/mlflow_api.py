"""MLflow's REST API, read the way any client would (no MLflow import)."""
from __future__ import annotations

import json
import urllib.parse
import urllib.request


def call(base: str, endpoint: str, body: dict | None = None, **query) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def experiment_id(base: str, name: str = "smdm") -> str:
    return call(base, "experiments/get-by-name", experiment_name=name)["experiment"]["experiment_id"]


def search(base: str, filter_string: str, experiment: str | None = None) -> list[dict]:
    body = {"experiment_ids": [experiment or experiment_id(base)], "filter": filter_string, "max_results": 1000}
    return call(base, "runs/search", body).get("runs", [])


def tags(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def metrics(run: dict) -> dict[str, float]:
    return {metric["key"]: metric["value"] for metric in run["data"].get("metrics", [])}


def pipeline_run(base: str, flow_run_id: str) -> tuple[dict, dict[str, dict]]:
    """The parent run of a flow run and its child runs by stage name."""
    [parent] = search(base, f"tags.prefect_flow_run_id = '{flow_run_id}'")
    children = search(base, f"tags.mlflow.parentRunId = '{parent['info']['run_id']}'")
    return parent, {tags(child)["smdm_stage"]: child for child in children}


def artifact_paths(base: str, run_id: str, path: str) -> list[str]:
    return [f["path"] for f in call(base, "artifacts/list", run_id=run_id, path=path).get("files", [])]


def artifact_text(base: str, run_id: str, path: str) -> str:
    query = urllib.parse.urlencode({"run_uuid": run_id, "path": path})
    with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=30) as response:
        return response.read().decode()
