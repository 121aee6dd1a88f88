"""Reports over evaluated runs: the scratch-vs-fine-tuned comparison
(:mod:`dsod_core.report.compare`: seed aggregates, paired bootstrap differences, Markdown
tables, the transfer matrix, the summary metrics and the plots) and the study page's Results
section (:mod:`dsod_core.report.study`). Functions of the evaluate stage's outputs
(``detail.json``, ``history.json``, ``matches.npz``) and of the reports built from them; they
know nothing of modalities, params files or DVC."""
