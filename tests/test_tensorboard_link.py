"""``wb.tensorboard(job)``: TensorBoard inside JupyterLab's address, the job's runs filtered in, link text escaped."""

from __future__ import annotations

import pytest

import workbench as wb
from workbench.api import tensorboard_link, tensorboard_url

SERVICES = {
    "jupyter": {"url": "http://127.0.0.1:8890/lab?token=abc&regexInput=x"},
    "tensorboard": {"url": "http://127.0.0.1:6010/tensorboard/"},
}


def test_the_link_goes_through_jupyterlab_and_focuses_the_job(workspace, write_script):
    job = wb.submit(str(write_script("print(1)\n")), framework="none", name="lenet")
    assert tensorboard_url(SERVICES) == "http://127.0.0.1:8890/tensorboard/"
    assert tensorboard_url(SERVICES, job) == f"http://127.0.0.1:8890/tensorboard/?runFilter={job.id}#timeseries"
    assert tensorboard_url(SERVICES, "lenet") == tensorboard_url(SERVICES, job)  # a name works too
    only_tb = {"tensorboard": SERVICES["tensorboard"]}
    assert tensorboard_url(only_tb, job).startswith("http://127.0.0.1:6010/tensorboard/?runFilter=")
    with pytest.raises(wb.ServiceError, match="workbench up"):
        tensorboard_url({})
    job.wait(60)


def test_link_text_is_escaped():
    html = tensorboard_link("http://h/tensorboard/?a=1&regexInput=x#timeseries")
    assert "&amp;regexInput=x" in html and "&regexInput" not in html.replace("&amp;", "")
    assert html.count("&amp;") == 2  # href and text
