"""Training the refactored text models from data files: the parts behind ``athelas_migrate.train``.

One job per module, in the order a run uses them:

- ``options``: the request (:class:`~.options.TrainOptions`), model names, settings and their precedence;
- ``tables``: reading CSV / TSV / Parquet files into columns, typed columns, the validation hold-out;
- ``build``: the model config, sequence length, vocabulary file and embeddings, the model object;
- ``batches``: column tensors, the dataset and the data loader (shared with ``predict``);
- ``metrics``: accuracy / F1 / AUROC, evaluation, the per-epoch history, the best epoch;
- ``trainer``: the run itself (:func:`~.trainer.train`) with a Lightning ``Trainer``;
- ``result``: the output directory, the result record, ``metrics.json``;
- ``render``: the end-of-training table.

Import from ``athelas_migrate.train`` (the public facade); this package imports nothing heavy at import time.
Each module's docstring says how to extend it.
"""
