"""fxml's SLURM launcher on submitit (``hydra/launcher=slurm``, ``hydra/launcher=slurm_local``)."""
