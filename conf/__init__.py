"""fxml's Hydra configs, shipped inside the installed package as ``fxml.conf`` (``pkg://fxml.conf``)."""
