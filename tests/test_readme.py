"""The README's worked examples run as written, in order, as one session would run them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_blocks_run_in_order():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2
    namespace: dict = {}
    shown_allocation = None
    for index, block in enumerate(blocks):
        exec(compile(block, f"README.md block {index}", "exec"), namespace)
        if re.search(r"print\(allocation\[0\]\)\s+#", block):
            # Later blocks rebind `allocation`; the printed one is this block's.
            shown_allocation = namespace["allocation"]
    assert shown_allocation is not None, "the README no longer prints allocation[0]"
    # The output the README shows, rounded as it says.
    shown = re.search(r"print\(allocation\[0\]\)\s+# (\{.*?\})", README.read_text()).group(1)
    rounded = {arm: round(w, 4) for arm, w in shown_allocation[0].items()}
    assert str(rounded) == shown
