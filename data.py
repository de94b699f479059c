"""The trial's data: the Airbnb duplicate-image splits as pair datasets (the work is in the samespace package).

A split directory (``Training Data/`` or ``Test Data/``) holds room-type folders of photos named
``<city>_<room_id>_<n>.jpg``; two photos are duplicates iff they share folder, city and room_id
(samespace.labelling). A split's pairs (samespace.pair_sampling: every positive pair upsampled x64 by flips and
+-5 degree rotations, negatives sampled by wHash similarity with seed 0) make a DuplicateImageDataset
(samespace.pair_dataset); the model_def.py trial loads one per split.

    python data.py download --path data          # the Kaggle dataset (same as `samespace download`)
    python data.py sample data/sample            # the generated sample set (same as `samespace sample`)
    python data.py stats "data/sample/Training Data"
"""

import sys

from samespace import cli
from samespace.commands.dataset import main
from samespace.devsets.sample_set import write_sample_dataset
from samespace.kaggle_data import dataset_root, download_data
from samespace.labelling import SPLITS, DataError
from samespace.pair_dataset import DuplicateImageDataset

__all__ = ["SPLITS", "DataError", "DuplicateImageDataset", "dataset_root", "download_data", "main",
           "write_sample_dataset"]

if __name__ == "__main__":
    sys.exit(cli.run_stoppably(lambda: main(prog="data.py")))
