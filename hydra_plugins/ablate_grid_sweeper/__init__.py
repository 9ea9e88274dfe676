"""`hydra/sweeper=grid` (the default): Hydra's basic sweeper with unions of grids, which always
hands the multirun to its end (so the report is written) whatever jobs died."""
