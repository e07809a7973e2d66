"""Evaluators, one place: point metrics against exact targets (:mod:`.metrics`), image
metrics (:mod:`.image_metrics`), concept-presence judges (:mod:`.concepts`) and the
verdicts on a composition (emptiness, impropriety: :mod:`.diagnostics`)."""
