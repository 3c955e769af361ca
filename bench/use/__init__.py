"""Using what was trained: a run's self-contained checkpoint (bench.train.checkpoint) put to work.

model.py     load a checkpoint's model onto a device; images to inputs as in training; top-k
predict.py   `python -m bench predict`: class probabilities for image files
evaluate.py  `python -m bench evaluate`: test error, per-class error, confusion matrix
"""
