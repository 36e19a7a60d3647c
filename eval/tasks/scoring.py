"""Per-document scoring functions that task YAMLs name with ``!function eval.tasks.scoring.<name>``.

Kept free of heavy imports: lm-eval imports this module while it loads a task.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f]")


def ruler_recall(doc: dict, results: list[str]) -> dict[str, float]:
    """RULER's ``string_match_all``: the share of the expected strings (``doc["outputs"]``) found in the generation.

    As in RULER, the generation is stripped and control characters become newlines before matching, and the
    match ignores case; each expected string counts once, whatever else the generation holds.
    """
    prediction = _CONTROL.sub("\n", results[0].strip()).strip().lower()
    answers = doc["outputs"]
    return {"recall": sum(a.lower() in prediction for a in answers) / len(answers)}
