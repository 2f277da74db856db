"""The training loop and everything a run keeps on disk:

    train.py        TrainConfig and its checks, the step (estimate, Adam, the variance monitor),
                    the loop with its evaluations, reports, checkpoints and stop on a signal
    adam.py         Adam in the TF reference's form, with its two-core pass over each tensor
    checkpoint.py   HDF5 checkpoints, written atomically
    resume.py       the state an exact resume needs besides the parameters (generators, counters)
    rundir.py       a run folder: config.json, metrics.h5, status.json, checkpoint.h5, its lock
    metrics.py      metrics.h5, one row per report line, readable while the run writes it
    hparams.py      the TF reference's hparams strings mapped onto TrainConfig

Import the modules themselves; this package imports nothing.
"""
