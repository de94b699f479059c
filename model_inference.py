"""Evaluate a SameSpace checkpoint on one labelled split, beside the reference methods (samespace.evaluation).

    python model_inference.py --checkpoint DIR --data-dir "data/Airbnb Data/Test Data" [--json FILE] [--plots DIR]
    samespace evaluate ...                                    # the same command, installed

``--pairing faithful`` reproduces the published evaluation (BCE and accuracy on upsampled positives and
hash-sampled negatives); ``unique`` scores every pair of distinct photos once (ROC-AUC, average precision, F1)
for the model and the reference methods. ``--write-threshold`` stores the model's best-F1 threshold in the
checkpoint, where the duplicate finder reads it.
"""

import sys

from samespace import cli
from samespace.commands.evaluate import main
from samespace.evaluation import evaluate

__all__ = ["evaluate", "main"]

if __name__ == "__main__":
    sys.exit(cli.run_stoppably(lambda: main(prog="model_inference.py")))
