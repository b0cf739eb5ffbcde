"""The plotly.js the report inlines: the "basic" partial bundle when it is installed and checks
out, the full bundle plotly.py ships otherwise.

The report draws scatter and bar traces only (with error bars, shapes and annotations, which
are in plotly.js's core). plotly.py carries the full bundle (about 4.8 MB, every trace type);
its parse, compile and start-up were most of the page's time to interactive at Almanac scale
(docs/benchmarks.md). plotly.js's own "basic" bundle (scatter, bar, pie; about 1.2 MB) does the
same drawing in a quarter of the bytes. No PyPI package carries it, so `make setup` fetches it
from the npm registry with npm (`python -m llm_almanac.plotlyjs`), into the package's
`web/vendor/` (ignored by git: never committed). It is used only when

- its version equals the plotly.js version plotly.py bundles (one plotly.js, whichever bundle),
- and its SHA-256 is the pinned one (the tarball's sha512 is checked when it is fetched);

otherwise the report inlines plotly.py's full bundle and says why in the log. Bumping plotly.py
means bumping BASIC here (tests/test_plotlyjs.py fails until the versions agree).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundle:
    package: str  # on the npm registry
    version: str  # plotly.js's version: must be plotly.py's bundled one
    member: str  # the file inside the package's tarball
    integrity: str  # the registry's sha512 of the tarball (npm's `dist.integrity`)
    sha256: str  # of the JavaScript file itself


BASIC = Bundle(
    package="plotly.js-basic-dist-min",
    version="4.1.1",
    member="package/plotly-basic.min.js",
    integrity="sha512-1oNF8PeQx2hv/y7tqEVWKD3JGwn/MGEMQ8mL9HUwsaqG9FGy/OU5FHUHvzqbqxN4mnwZGI9abTiE775C4kkjMQ==",
    sha256="99784e3abfb07b142a15e521a439e6d9addceadb3f79553fd24c72774f0649ba",
)


@dataclass(frozen=True)
class Script:
    text: str
    bundle: str  # "basic" or "full"
    version: str
    why: str  # why the full bundle, when it is


def vendor_path() -> Path:
    """Where `make setup` puts the basic bundle: inside the package, beside the page's own JS."""
    return Path(str(resources.files("llm_almanac").joinpath("web", "vendor", Path(BASIC.member).name)))


def full_version() -> str:
    from plotly.offline.offline import get_plotlyjs_version

    return str(get_plotlyjs_version())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def basic_problem(path: Path | None = None, bundle: Bundle | None = None) -> str | None:
    """Why the basic bundle at `path` cannot stand in for the full one (None: it can)."""
    path, bundle = path or vendor_path(), bundle or BASIC
    if bundle.version != full_version():
        return (
            f"the pinned {bundle.package} is plotly.js {bundle.version}, plotly.py bundles "
            f"{full_version()}: update llm_almanac.plotlyjs.BASIC"
        )
    if not path.is_file():
        return f"{path} is not there (`make setup` fetches it with npm: python -m llm_almanac.plotlyjs)"
    if _sha256(path.read_bytes()) != bundle.sha256:
        return f"{path} is not the pinned {bundle.package}@{bundle.version} (SHA-256 differs)"
    return None


def script(path: Path | None = None, bundle: Bundle | None = None) -> Script:
    """The plotly.js to inline in the report: the basic bundle if it checks out, else the full one."""
    path, bundle = path or vendor_path(), bundle or BASIC
    why = basic_problem(path, bundle)
    if why is None:
        return Script(path.read_text(encoding="utf-8"), "basic", bundle.version, "")
    log.warning("report: inlining the full plotly.js bundle (4.8 MB, slower to start): %s", why)
    import plotly.offline

    return Script(plotly.offline.get_plotlyjs(), "full", full_version(), why)


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def extract(tarball: bytes, bundle: Bundle | None = None) -> bytes:
    """The bundle's JavaScript out of its npm tarball, after checking both hashes."""
    bundle = bundle or BASIC
    if _integrity(tarball) != bundle.integrity:
        raise ValueError(f"{bundle.package}@{bundle.version}: the tarball's sha512 is not the pinned one")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tf:
        f = tf.extractfile(bundle.member)
        if f is None:
            raise ValueError(f"{bundle.package}@{bundle.version}: no {bundle.member} in the tarball")
        js = f.read()
    if _sha256(js) != bundle.sha256:
        raise ValueError(f"{bundle.package}@{bundle.version}: {bundle.member} is not the pinned file (SHA-256)")
    return js


def fetch(dest: Path | None = None, bundle: Bundle | None = None, npm: str = "npm") -> Path:
    """Fetch the pinned bundle from the npm registry with npm (`npm pack`, which honours the
    user's npm configuration), check it, and write it to `dest` (atomically)."""
    from .files import replacing

    dest, bundle = dest or vendor_path(), bundle or BASIC
    if dest.is_file() and _sha256(dest.read_bytes()) == bundle.sha256:
        return dest
    exe = shutil.which(npm)
    if not exe:
        raise RuntimeError(
            f"{npm} is not installed (Debian: apt-get install npm); the report will inline "
            "plotly.py's full plotly.js bundle instead"
        )
    with tempfile.TemporaryDirectory(prefix="plotlyjs-") as td:
        p = subprocess.run(
            [exe, "pack", f"{bundle.package}@{bundle.version}", "--pack-destination", td, "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=td,
        )
        tgz = sorted(Path(td).glob("*.tgz"))
        if p.returncode != 0 or len(tgz) != 1:
            raise RuntimeError(f"npm pack {bundle.package}@{bundle.version} failed: {(p.stderr or p.stdout)[-1000:]}")
        js = extract(tgz[0].read_bytes(), bundle)
    with replacing(dest) as tmp:
        tmp.write_bytes(js)
    return dest


def main(argv: list[str] | None = None) -> int:
    """`python -m llm_almanac.plotlyjs`: fetch the basic bundle (`make setup` runs it)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check":
        why = basic_problem()
        print(why or f"{vendor_path()}: {BASIC.package}@{BASIC.version}, checked")
        return 1 if why else 0
    try:
        print(f"{fetch()}: {BASIC.package}@{BASIC.version}, checked")
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"warning: {exc}; the report will inline the full plotly.js bundle (slower to open)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
