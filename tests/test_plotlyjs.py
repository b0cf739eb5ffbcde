"""The plotly.js the report inlines: the pinned basic bundle when it checks out (version equal
to plotly.py's, hashes), plotly.py's full bundle otherwise; fetched with npm, checked by hash."""

import base64
import hashlib
import io
import tarfile
from dataclasses import replace

import pytest

from llm_almanac import plotlyjs
from llm_almanac.report import build_report

JS = b"/** plotly.js (basic - minified) v0.0.0 */ window.Plotly = {};\n"


def _tarball(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def fake():
    """A bundle pinned to a small made-up package, at plotly.py's plotly.js version."""
    tgz = _tarball(plotlyjs.BASIC.member, JS)
    return tgz, replace(
        plotlyjs.BASIC,
        version=plotlyjs.full_version(),
        sha256=hashlib.sha256(JS).hexdigest(),
        integrity="sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode(),
    )


def test_the_pinned_basic_bundle_is_plotly_py_s_plotly_js_version():
    assert plotlyjs.BASIC.version == plotlyjs.full_version()


def test_basic_only_when_it_checks_out(fake, tmp_path):
    _, bundle = fake
    f = tmp_path / "plotly-basic.min.js"
    assert "is not there" in plotlyjs.basic_problem(f, bundle)
    full = plotlyjs.script(f, bundle)
    assert full.bundle == "full" and len(full.text) > 3_000_000 and full.why
    f.write_bytes(JS)
    s = plotlyjs.script(f, bundle)
    assert (s.bundle, s.text, s.why) == ("basic", JS.decode(), "")
    f.write_bytes(JS + b"// changed\n")  # not the pinned file
    assert plotlyjs.script(f, bundle).bundle == "full" and "SHA-256" in plotlyjs.basic_problem(f, bundle)
    f.write_bytes(JS)
    other = replace(bundle, version="0.0.1")  # plotly.py bundles another plotly.js than the pinned one
    assert plotlyjs.script(f, other).bundle == "full" and "update llm_almanac.plotlyjs.BASIC" in plotlyjs.basic_problem(f, other)


def test_extract_checks_both_hashes(fake):
    tgz, bundle = fake
    assert plotlyjs.extract(tgz, bundle) == JS
    with pytest.raises(ValueError, match="sha512"):
        plotlyjs.extract(tgz + b"\0", bundle)
    other = _tarball(bundle.member, JS + b"//")
    with pytest.raises(ValueError, match="SHA-256"):
        plotlyjs.extract(other, replace(bundle, integrity="sha512-" + base64.b64encode(hashlib.sha512(other).digest()).decode()))


def test_fetch_with_npm_pack(fake, tmp_path):
    """fetch runs `npm pack PACKAGE@VERSION --pack-destination DIR` (here a stand-in npm that
    hands over the made-up tarball), checks it and writes the file; a bad tarball writes nothing."""
    tgz, bundle = fake
    (tmp_path / "pkg.tgz").write_bytes(tgz)
    npm = tmp_path / "npm"
    npm.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/args\n'
        f'while [ "$1" != "--pack-destination" ]; do shift; done; cp {tmp_path}/pkg.tgz "$2"/x-1.tgz\n'
    )
    npm.chmod(0o755)
    dest = tmp_path / "vendor" / "plotly-basic.min.js"
    assert plotlyjs.fetch(dest, bundle, npm=str(npm)) == dest and dest.read_bytes() == JS
    assert (tmp_path / "args").read_text().startswith(f"pack {bundle.package}@{bundle.version} --pack-destination")
    dest.unlink()
    (tmp_path / "pkg.tgz").write_bytes(tgz[:-1] + b"x")
    with pytest.raises(ValueError, match="sha512"):
        plotlyjs.fetch(dest, bundle, npm=str(npm))
    assert not dest.exists()
    with pytest.raises(RuntimeError, match="not installed"):
        plotlyjs.fetch(dest, bundle, npm=str(tmp_path / "no-npm"))


def test_the_report_says_which_bundle_it_carries(tmp_path):
    """With the basic bundle installed (`make setup`), the report inlines it, and says so."""
    import answers_data

    db = answers_data.build(tmp_path)
    text = build_report(db, tmp_path / "report.html").read_text()
    want = "full" if plotlyjs.basic_problem() else "basic"
    assert f'<script id="plotly-js" data-bundle="{want}" data-version="{plotlyjs.full_version()}">' in text
    if want == "full":
        pytest.skip(f"the basic bundle is not installed here: {plotlyjs.basic_problem()}")
    assert len(text) < 2_500_000
