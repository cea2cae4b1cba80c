"""Files that are never seen half-written: write beside the target, then rename over it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def replace_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Make ``path`` by ``write(temporary path)`` beside it and a rename (never half-written, also when
    parallel jobs write the same file; the temporary file is removed if writing fails); the file is
    readable by the group and others (0644). ``write`` must write exactly the path it is given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
