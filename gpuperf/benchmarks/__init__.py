"""Evidence harness: benchmark tables, RESULTS.md, baselines and the method-accuracy benchmark.

Library code behind ``gpuperf bench``; importable without the repository's ``bench/`` folder.

Modules
-------
conventions   the ``benchmark.extra_info`` keys every benchmark records, ``record``, ``synced``
machine       CPU/GPU description and git commit of the checkout
table         rows, ratios and rendering from pytest-benchmark JSON
results       the ``bench/RESULTS.md`` writer (latest numbers per machine)
runner        locating ``bench/`` and running pytest-benchmark on it
baselines     reference implementations (voxel loops, plain NumPy, osipy 0.1.4 adapters)
accuracy      bias and spread of the methods on simulated phantoms with known truth
"""
