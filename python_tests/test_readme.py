"""The README's usage example runs as written."""

import pathlib
import re

from conftest import requires_extension


@requires_extension
def test_readme_usage_example_runs():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Usage\n\n```python\n(.*?)```", readme, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out, loss = scope["out"], scope["loss"]
    assert [f.shape[0] for f in out.feats] == [64, 64, 64] and loss.isfinite()
