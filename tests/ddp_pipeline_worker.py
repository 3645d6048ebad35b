"""``hiercam`` command line, recording the files this process writes (for test_pipeline_distributed.py).

Launched by the test as ``python -m torch.distributed.run ... ddp_pipeline_worker.py run CONFIG --out DIR``.
Every atomic write of hiercam ends in ``os.replace``; the targets are logged to
``$HIERCAM_WRITES_DIR/writes-<rank>.json``.
"""

import json
import os
import sys
from pathlib import Path

written: list[str] = []
_replace = os.replace


def _recording_replace(source: str, target: str) -> None:
    written.append(str(target))
    _replace(source, target)


os.replace = _recording_replace  # type: ignore[assignment]

from hiercam.cli import main  # noqa: E402

if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    finally:
        log = Path(os.environ["HIERCAM_WRITES_DIR"]) / f"writes-{os.environ.get('RANK', '0')}.json"
        log.write_text(json.dumps(written))
    sys.exit(status)
