"""The decoupled pipeline as library calls: the CLI and the tests call these.

``train`` (train.py) = data -> stage 1 (stage1.py, a cache) -> stage-2 heads sharing one
frozen pass -> evaluation (evaluate.py) -> reports, in a run folder (rundir.py); ``sweep``
(sweep.py) repeats it per run and averages. Checks that must pass before any work are in
preflight.py; config -> objects in build.py.
"""
