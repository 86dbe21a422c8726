"""The experiments ``jnmf run`` runs by name: a config's ``experiment = "guided_nmf"`` is ``jnmf.jobs.guided_nmf``.

Each module has ``run(config, out_dir, data_dir, report)`` and may declare ``CONFIG_SCHEMA`` and
``validate_config(config, path)`` (the protocol in ``jnmf.cli``). The shipped configs that use them are in
``jnmf/configs/`` (``jnmf run guided_nmf``, ``jnmf show guided_nmf`` prints one to copy and edit):

* ``guided_nmf``: the guided-NMF vignette (baseline, refine, target enrichment and removal, assess, figures);
* ``choose_k``: cross-validated test error and consensus stability against the rank;
* ``integration_benchmark``: batch removal scored by scIB metrics against Harmony, regress-out and PCA.

A config may instead name a script of its own: ``experiment = "my_job.py"``, relative to the config file.
"""
