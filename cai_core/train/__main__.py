"""One rank of a multi-process run: `torchrun ... -m cai_core.train [--data-dir D] [--db F] RUN_ID`.

The run's own process (`cai resume RUN_ID`, see `launch.run_train_job`) starts these through
`torchrun` or `accelerate launch` after doing what must happen once; each rank then trains its share.
"""

import argparse
import os
import sys

from ..jobs import JobFolder
from ..workspace import Workspace
from .config import TrainError, check_run_id
from .launch import run_rank


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m cai_core.train", description=__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--db")
    parser.add_argument("run_id")
    args = parser.parse_args(argv)
    ws = Workspace.from_env(args.data_dir, args.db)
    try:
        run_rank(JobFolder(ws.runs_dir / check_run_id(args.run_id)), ws)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
