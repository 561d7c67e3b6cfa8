"""Output directories: replaced whole, and only when they hold exactly what reportgen wrote."""

from __future__ import annotations

import hashlib
import json

import pytest

from reportgen.atomic import MANIFEST, check_replaceable, replace_dir, unchanged
from reportgen.errors import ReportgenError


def write_site(d, text="v1"):
    (d / "index.html").write_text(text)
    (d / "sub").mkdir()
    (d / "sub" / "page.html").write_text(text)


def test_a_file_added_while_the_new_output_is_written_is_kept(tmp_path):
    """The check before the run is repeated at the swap: a note saved meanwhile stops the swap."""
    out = tmp_path / "site"
    replace_dir(out, write_site)

    def write_and_meanwhile_a_user_saves_a_note(d):
        write_site(d, "v2")
        (out / "NOTES.md").write_text("precious")

    with pytest.raises(ReportgenError, match="NOTES.md.*while reportgen was writing it"):
        replace_dir(out, write_and_meanwhile_a_user_saves_a_note)
    assert (out / "NOTES.md").read_text() == "precious" and (out / "index.html").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary directories left


def test_a_site_from_before_the_manifest_is_recognised_by_its_stamp(tmp_path):
    """Sites written by an older reportgen list their files in .reportgen-site.json."""
    out = tmp_path / "site"
    out.mkdir()
    write_site(out)
    files = {p: hashlib.sha256((out / p).read_bytes()).hexdigest() for p in ("index.html", "sub/page.html")}
    (out / ".reportgen-site.json").write_text(json.dumps({"fingerprint": "x", "files": files}))
    check_replaceable(out, "--out", "the site")
    (out / "extra.txt").write_text("mine")
    with pytest.raises(ReportgenError, match="extra.txt"):
        check_replaceable(out, "--out", "the site")


def test_manifest_and_clutter(tmp_path):
    out = tmp_path / "site"
    replace_dir(out, write_site)
    recorded = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(recorded) == ["index.html", "sub/page.html"] and unchanged(out)
    (out / ".DS_Store").write_bytes(b"\0")  # a file browser's, not the user's
    (out / "sub" / MANIFEST).write_text("a user's file that happens to share the name")
    assert not unchanged(out)
    with pytest.raises(ReportgenError, match=f"sub/{MANIFEST}"):
        check_replaceable(out, "--out", "the site")


@pytest.mark.parametrize("mask, mode", [(0o022, 0o755), (0o077, 0o700)])
def test_an_output_is_as_shared_as_the_users_umask_says(tmp_path, mask, mode):
    import os

    old = os.umask(mask)
    try:
        replace_dir(tmp_path / "site", write_site)
    finally:
        os.umask(old)
    assert (tmp_path / "site").stat().st_mode & 0o777 == mode
