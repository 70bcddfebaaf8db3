"""The Ray side of distopt: the search on Ray Tune + Optuna (:mod:`.tuning`, its trial scheduler
:mod:`.scheduler` and searcher), trials as Ray Train jobs or in their own Tune actors
(:mod:`.run`), what a cluster holds (:mod:`.capacity`), children (:mod:`.children`) and the
teacher (:mod:`.teacher`) of a trial, the driver's live table and callbacks
(:mod:`.progress`), Ray metrics (:mod:`.telemetry`), and Tune's results turned into
``trials.parquet`` (:mod:`.collect`; the report itself is :mod:`distopt.results`).

Models, data, compression and the training loop (``distopt.models``, ``distopt.data``,
``distopt.compress``, ``distopt.training``) know nothing of Ray; everything that does lives
here. (Not named ``search``: ``distopt/search.py`` is the entry script ``ray submit`` copies.)
"""
