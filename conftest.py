"""pytest's set-up for the whole repository: the tests and the notebooks under nbval run in the `ci` profile
(small and fast) unless $LLAMA2_MINIMAL_PROFILE says otherwise; a learner's JupyterLab gets `laptop`."""

import os

os.environ.setdefault("LLAMA2_MINIMAL_PROFILE", "ci")
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # notebook kernels inherit it: no thread oversubscription
