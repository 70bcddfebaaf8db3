"""A search's results as files: the ``trials.parquet`` schema, the objective space the front
and its hypervolume are measured in, the report, manifest and plots. Nothing here imports Ray,
so ``distopt report`` rebuilds everything from stored files alone."""
