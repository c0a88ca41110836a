"""The main job, `python -m msmix_ext.train`: datasets, metrics, the training runner and its CLI."""
