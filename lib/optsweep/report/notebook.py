"""Execute a jupytext notebook with papermill and convert it to a self-contained HTML page.

Papermill cannot read a jupytext .py directly, so the notebook is read with jupytext and handed over as a
notebook object. The executed .ipynb goes to the project's build/notebooks/ (for JupyterLab; it changes on
every run, so no pipeline stage depends on it); the HTML hides the code and embeds the figures. A notebook
that stops on bad input (a `ParamsError`) fails with that one line, not with the kernel's traceback.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from typing import Any

from ..params.paths import project
from ..params.settings import ParamsError

KERNEL = "python3"
TEMPLATES = Path(__file__).parent / "templates"  # "offline": nbconvert's lab template without CDN scripts


def parse_parameter(text: str) -> tuple[str, Any]:
    """`name=value` with a Python literal value (`scale=n1d1` stays a string)."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError(f"-p {text!r}: expected name=value")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def run_notebook(notebook: Path, html_out: Path, parameters: dict[str, Any]) -> Path:
    """Run `notebook` with `parameters` injected after its `parameters` cell; write `html_out`."""
    import jupytext
    import nbconvert
    import papermill

    executed = project().executed_notebooks / f"{html_out.stem}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    html_out.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            jupytext.read(notebook),
            str(executed),
            parameters=parameters,
            kernel_name=KERNEL,
            cwd=os.getcwd(),
            progress_bar=False,
            stdout_file=sys.stdout,
            stderr_file=sys.stderr,
        )
    except papermill.PapermillExecutionError as error:
        if error.ename == ParamsError.__name__:
            raise ParamsError(f"{notebook}: {error.evalue}") from None
        raise
    exporter = nbconvert.HTMLExporter(
        template_name="offline", extra_template_basedirs=[str(TEMPLATES)],
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
    )
    body, _ = exporter.from_filename(str(executed))
    tmp = html_out.with_suffix(".html.tmp")
    tmp.write_text(body)
    os.replace(tmp, html_out)
    return html_out
