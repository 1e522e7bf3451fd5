"""The MLflow UI of a finished flow run, as a person sees it: headless Chromium (Debian's
chromium + chromium-driver) driven by selenium, screenshots kept under the artifacts folder."""
from __future__ import annotations

import re

import pytest

from tests.flows import mlflow_api
from tests.flows.toy_repo import REPORT_SCORE, STAGES

pytestmark = pytest.mark.slow
def wait_for_text(driver, *texts: str, timeout: float = 60) -> str:
    """The page's visible text once it shows every one of `texts` (the UI renders late)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: all(t in d.find_element("tag name", "body").text for t in texts))
    return driver.find_element("tag name", "body").text


# What MLflow 3's GenAI view shows and its model-training view does not.
GENAI_ONLY = ("Judges", "Evaluation runs", "Evaluations", "Sessions", "Playground", "Training runs")


def test_mlflow_ui_shows_the_pipeline_run_its_stages_and_a_metric(stack, up_run, browser, artifacts):
    from selenium.webdriver.common.by import By

    base = stack.mlflow_url
    experiment = mlflow_api.experiment_id(base)
    parent, children = mlflow_api.pipeline_run(base, up_run.flow_run_id)
    parent_name = parent["info"]["run_name"]

    # The link `python -m flows up` printed, opened in a browser that has never seen MLflow.
    link = re.search(r"MLflow UI:  (\S+)", up_run.output).group(1)
    assert link == f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    browser.get(link)
    page = wait_for_text(browser, "smdm", parent_name, "Model registry")
    (artifacts / "mlflow-runs.txt").write_text(page)
    # The model-training view: the runs table is the experiment's page, under the tab `Runs`.
    assert "Runs" in page.splitlines() and "Run Name" in page
    assert not [text for text in GENAI_ONLY if text in page], page
    # Child runs are nested under their parent: the runs table lists them once it is expanded.
    expander = browser.find_element(
        By.XPATH, f"//a[normalize-space()='{parent_name}']/ancestor::div[@role='gridcell'][1]//button")
    expander.click()
    wait_for_text(browser, *STAGES)
    assert all(browser.find_elements(By.LINK_TEXT, stage) for stage in STAGES)
    browser.save_screenshot(str(artifacts / "mlflow-runs.png"))

    # A run's page, by a link like the one printed: MLflow 3.17's own links (the run names in the
    # table) drop `workflowType`, and the view falls back to the browser's last choice (mlflow#24498).
    report_id = children["report"]["info"]["run_id"]
    browser.get(f"{base}/#/experiments/{experiment}/runs/{report_id}?workflowType=machine_learning")
    page = wait_for_text(browser, "Parent run", parent_name, "score", str(REPORT_SCORE))
    (artifacts / "mlflow-report-run.txt").write_text(page)
    assert not [text for text in GENAI_ONLY if text in page], page
    metric = browser.find_element(By.XPATH, "//*[normalize-space()='score']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", metric)
    browser.save_screenshot(str(artifacts / "mlflow-report-run.png"))
    assert "smdm_status" in page and "Finished" in page
    assert (artifacts / "mlflow-report-run.png").stat().st_size > 10_000
