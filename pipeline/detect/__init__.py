"""The detectors: VAE ensembles for tables and images, their density terms, fitting, saving and loading."""
