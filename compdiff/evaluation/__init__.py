"""Evaluators, one place: point metrics against exact targets (:mod:`.metrics`), image
metrics (:mod:`.image_metrics`), concept-presence judges (:mod:`.concepts`), the verdicts
on a composition (emptiness, impropriety: :mod:`.diagnostics`), the noise-image detector
(:mod:`.noise_images`) and the one batched apply they run classifiers with
(:mod:`.batched`)."""
