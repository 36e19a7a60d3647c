"""Corpora from Debian documentation packages: markup stripping, selection, and a whole build from a .deb made here
(no network)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from experiments import corpora
from experiments.corpora import (
    CORPORA,
    Corpus,
    CorpusError,
    Files,
    build_corpus,
    download_package,
    prose_share,
    strip_html,
    strip_pod,
    strip_roff,
    strip_rst,
)

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")

MANPAGE = r""".\" Copyright (c) 1993 by Someone
.\" SPDX-License-Identifier: Linux-man-pages-copyleft
.TH signal 7 2023-02-05 "Linux man-pages 6.03"
.SH NAME
signal \- overview of signals
.SH DESCRIPTION
Linux supports both POSIX reliable signals and POSIX real-time
signals.
.SS Signal dispositions
Each signal has a current
.IR disposition ,
which determines how the process behaves when it is delivered
the signal (see
.BR core (5)).
.TP
.B Term
Default action is to terminate the process.
.PP
The \fBkill\fP(2) call sends a signal\(emany signal\[em]to a process.
.TS
allbox;
l l.
SIGHUP	1
.TE
.EX
int main(void)
{
    return 0;
}
.EE
"""

POD = """=head1 NAME

perlgit - Detailed information about git and the Perl repository

=head1 DESCRIPTION

This document provides details on using B<git> to develop Perl, see
L<perlhack|perlhack> and C<< $x->method >> for E<lt>moreE<gt>.

    % git clone git@github.com:Perl/perl5.git perl

=begin html

<p>hidden</p>

=end html

=over 4

=item * The first item

Its text.

=back

=cut

sub not_documentation { 1 }
"""

HTML_PAGE = """<!DOCTYPE html><html><head><title>13.2. Customizing</title><style>p {color: red}</style>
<script>var x = 1;</script></head><body><div id="banner"><a href="x">Download the ebook</a></div>
<div class="navheader"><a href="prev.html">Prev</a> | <a href="next.html">Next</a></div>
<h1 class="title">13.2. Customizing the Graphical Interface</h1>
<p>The graphical interface only provides <em>display</em> space.
   Running the X&nbsp;server &amp; nothing else leads to an empty screen.</p>
<pre>$ startx
    indented line</pre>
<ul><li>first<li>second</ul>
<div class="sphinxsidebar" role="navigation"><p>Table of contents</p></div>
<p>Unclosed paragraph <span class="indexterm">index term</span>after.
<ul class="docnav"><li class="previous"><a href="a.html">Previous</a></li></ul>
</body></html>
"""

RST = """.. SPDX-License-Identifier: GPL-2.0

.. _pci:

How To Write Linux PCI Drivers
==============================

.. toctree::
   :maxdepth: 2

   pci
   msi-howto

The world of PCI is vast, see :ref:`the MSI guide <msi-howto>` and :c:func:`pci_enable_device`.

.. note::
   This note stays.

Example::

    static int probe(struct pci_dev *dev)
"""


def test_strip_roff_joins_filled_text_and_drops_requests_tables_and_comments():
    text = strip_roff(MANPAGE)
    assert text.startswith("NAME\nsignal - overview of signals\n\nDESCRIPTION\n")
    assert "Linux supports both POSIX reliable signals and POSIX real-time signals." in text
    assert "Each signal has a current disposition, which determines how the process behaves when it is delivered " \
           "the signal (see core(5))." in text
    assert "\nTerm\nDefault action is to terminate the process." in text
    assert "The kill(2) call sends a signal—any signal—to a process." in text
    assert "{\n    return 0;\n}" in text  # no-fill example blocks keep their lines
    assert "Copyright" not in text and "SIGHUP" not in text and ".TH" not in text and "\\f" not in text


def test_strip_pod_resolves_codes_and_drops_code_and_begin_blocks():
    text = strip_pod(POD)
    assert text.startswith("NAME\n\nperlgit - Detailed information")
    assert "using git to develop Perl, see perlhack and $x->method for <more>." in " ".join(text.split())
    assert "    % git clone git@github.com:Perl/perl5.git perl" in text
    assert "The first item\n\nIts text." in text
    assert "hidden" not in text and "not_documentation" not in text and "=head" not in text


def test_strip_html_keeps_visible_text_and_drops_navigation_scripts_and_styles():
    text = strip_html(HTML_PAGE)
    assert text.startswith("13.2. Customizing the Graphical Interface\n\n")
    assert "The graphical interface only provides display space. Running the X server & nothing else leads to an " \
           "empty screen." in text
    assert "$ startx\n    indented line" in text
    assert "first\nsecond" in text
    assert "Unclosed paragraph after." in text
    for hidden in ("color", "var x", "Download the ebook", "Prev", "Table of contents", "index term", "Previous"):
        assert hidden not in text, hidden


def test_strip_rst_drops_comments_targets_and_options_and_unwraps_roles():
    text = strip_rst(RST)
    assert text.startswith("How To Write Linux PCI Drivers\n==============================")
    assert "see the MSI guide and pci_enable_device." in text
    assert ".. note::\n   This note stays." in text
    assert "    static int probe(struct pci_dev *dev)" in text
    assert "SPDX" not in text and "_pci" not in text and ":maxdepth:" not in text


def test_prose_share_separates_prose_from_code():
    prose = strip_roff(MANPAGE)
    code = "\n".join(f"    r{i} = regs[{i}] ^ 0x{i:04x}; /* {i} */" for i in range(40))
    assert prose_share(prose) > 0.8
    assert prose_share(code) < 0.6
    assert prose_share("Title\n=====\n\nSome words here") == 1.0  # heading underlines are layout


def _deb(tmp_path: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    root = tmp_path / f"{name}-build"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <test@example.org>\n"
        f"Description: test documents\n")
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    deb = tmp_path / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


PROSE = ("The kernel schedules tasks across processors so that each one gets a fair share of time, and it moves "
         "them when a processor is idle. ") * 6


@needs_dpkg
def test_build_corpus_from_a_cached_deb_writes_clean_documents_and_a_source_note(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    deb = _deb(tmp_path, "demo-doc", "1.0-1", {
        "usr/share/man/man7/demo.7.gz": gzip.compress(MANPAGE.encode() + PROSE.encode()),
        "usr/share/doc/demo/html/page.html": HTML_PAGE.replace("leads to", PROSE + " leads to").encode(),
        "usr/share/doc/demo/html/copy.html": HTML_PAGE.replace("leads to", PROSE + " leads to").encode(),
        "usr/share/doc/demo/html/stub.html": b"<html><body><p>Moved.</p></body></html>",
        "usr/share/doc/demo/html/code.html": ("<pre>" + "x[0] = 0x1f; y(1, 2); // {}\n" * 60 + "</pre>").encode(),
        "usr/share/doc/demo/rst/guide.rst.gz": gzip.compress((RST + PROSE).encode()),
        "usr/share/doc/demo/rst/skipped/other.rst.gz": gzip.compress((RST + PROSE).encode()),
    })
    shutil.move(deb, cache / deb.name)
    demo = Corpus(name="demo", packages=("demo-doc",), license="MIT (test)", role="validation",
                  description="Test documents.",
                  files=(Files("usr/share/man/man*/*.gz", "roff"), Files("usr/share/doc/demo/html/*.html", "html"),
                         Files("usr/share/doc/demo/rst/*.rst.gz", "rst", exclude=("*/skipped/*",))))
    monkeypatch.setitem(CORPORA, "demo", demo)

    out = build_corpus("demo", tmp_path / "out", cache=cache)

    assert out == tmp_path / "out" / "demo.jsonl.gz"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    with gzip.open(out, "rt") as lines:
        texts = [json.loads(line)["text"] for line in lines]
    assert len(texts) == 3  # copy.html is a duplicate, stub.html tiny, code.html code, skipped/ excluded
    html_text, rst_text, roff_text = texts  # sorted path order: doc/demo/html, doc/demo/rst, man
    assert html_text.startswith("13.2. Customizing") and "<" not in html_text and "Download" not in html_text
    assert rst_text.startswith("How To Write Linux PCI Drivers") and "SPDX" not in rst_text
    assert roff_text.startswith("NAME\nsignal - overview") and ".TH" not in roff_text
    note = (tmp_path / "out" / "demo.SOURCE.md").read_text()
    assert "demo-doc 1.0-1 (`demo-doc_1.0-1_all.deb`)" in note
    assert "license: MIT (test)" in note and "role: validation (held out" in note
    assert f"documents: 3; characters: {sum(map(len, texts)):,}" in note
    assert "Of 6 files: 1 dropped as tiny" in note and "1 as code-heavy" in note and "1 as exact duplicates" in note

    # a second build reuses the unpacked package and gives the same bytes
    first = out.read_bytes()
    assert build_corpus("demo", tmp_path / "out", cache=cache).read_bytes() == first


def test_unknown_corpus_names_the_known_ones(tmp_path):
    with pytest.raises(CorpusError, match="unknown corpus 'nope'.*linux-doc"):
        build_corpus("nope", tmp_path)


def test_a_failed_download_names_the_package(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package nosuch-doc' >&2\nexit 100\n")
    os.chmod(fake / "apt-get", 0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(CorpusError, match=r"package nosuch-doc=1\.0: apt-get download failed "
                                          r"\(E: Unable to locate package nosuch-doc\)"):
        download_package("nosuch-doc=1.0", tmp_path / "cache")

    monkeypatch.setattr(corpora.shutil, "which", lambda _: None)
    with pytest.raises(CorpusError, match="package other-doc: apt-get is not on this machine"):
        download_package("other-doc", tmp_path / "cache")


def test_registry_has_training_and_held_out_corpora_with_licences():
    roles = {c.role for c in CORPORA.values()}
    assert roles == {"train", "validation"}
    for c in CORPORA.values():
        assert c.license and c.packages and c.files
        assert all(f.markup in corpora.STRIPPERS for f in c.files)


def test_cli_lists_the_corpora(capsys):
    from engram_lab.cli import main

    assert main(["corpus", "--list"]) == 0
    out = capsys.readouterr().out
    assert "linux-doc" in out and "debian-books" in out and "validation" in out
