"""ablate's Hydra launcher plugins, found by Hydra's scan of the ``hydra_plugins`` namespace package.

    local_launcher.py  ``hydra/launcher=local``: a sweep's jobs on this machine's GPUs, a fresh process
                       each (config registered in the ConfigStore: group hydra/launcher, name local)
    slurm_launcher.py  the launcher behind conf/hydra/launcher/slurm.yaml: Hydra's submitit Slurm
                       launcher, waiting for every job and returning each one's outcome
"""
