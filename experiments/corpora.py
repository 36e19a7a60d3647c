"""Real English corpora built from Debian documentation packages, for training beside GCIDE and for held-out validation.

Each corpus names the package(s) it is built from, their licence and which of their files become documents. Building
one downloads the packages (``apt-get download``, cached), unpacks them (``dpkg-deb -x``), strips the markup of each
file (roff, HTML, POD; reStructuredText keeps its plain structure), drops tiny and code-heavy documents and exact
duplicates, and writes ``<out>/<name>.jsonl.gz`` (one ``{"text": ...}`` a line, the format ``data.source: files``
reads) and ``<out>/<name>.SOURCE.md``. The data never goes into the repository: it is rebuilt from the packages.

Package versions: Debian's mirror keeps only the current version of a package, so pinning a version that a security
update replaces would make the corpus unbuildable. The package *name* fixes the upstream release (``linux-doc-6.1``,
``python3.11-doc``); the exact version downloaded is written to SOURCE.md. Versions are pinned only where the package
has no updates in the release.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from engram_lab.files import write_text_atomic, write_through_temp

DEFAULT_CACHE = Path("~/.cache/engram-lab/corpora").expanduser()


class CorpusError(RuntimeError):
    """A corpus could not be built: unknown name, a package that could not be downloaded or unpacked."""


@dataclass(frozen=True)
class Files:
    """Files of an unpacked package that become documents: ``pattern`` and ``exclude`` are shell globs on the path
    relative to the unpacked root (``*`` crosses folders); ``markup`` picks the stripper."""

    pattern: str
    markup: str  # rst | text | html | roff | pod
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Corpus:
    name: str
    packages: tuple[str, ...]  # Debian package names, ``name=version`` to pin
    license: str
    role: str  # train | validation: validation corpora are kept out of every training mix
    description: str
    files: tuple[Files, ...]
    min_chars: int = 500  # shorter documents are stubs, index pages or redirects
    min_prose: float = 0.72  # prose_share below which a document is mostly code or tables
    max_chars: int | None = None  # cap, reached by taking documents in sorted path order
    note: str = ""


CORPORA: dict[str, Corpus] = {c.name: c for c in (
    Corpus(
        name="linux-doc",
        packages=("linux-doc-6.1",),
        license="GPL-2.0 (the Linux kernel's Documentation/; a few files dual-licensed GPL-2.0 or CC-BY-4.0)",
        role="train",
        description="The Linux kernel's Documentation/ tree (reStructuredText and plain text), English only.",
        files=(Files("usr/share/doc/linux-doc-6.1/Documentation/*.rst.gz", "rst",
                     exclude=("*/translations/*", "*/devicetree/*", "*/sphinx/*", "*/litmus-tests/*",
                              "*/features/*", "*/ABI/*")),
               Files("usr/share/doc/linux-doc-6.1/Documentation/*.txt.gz", "text",
                     exclude=("*/translations/*", "*/devicetree/*", "*/sphinx/*", "*/litmus-tests/*",
                              "*/features/*", "*/ABI/*"))),
        note=("Translations, device-tree bindings (YAML), ABI listings, feature matrices and litmus tests are left "
               "out: they are not English prose."),
    ),
    Corpus(
        name="python-docs",
        packages=("python3.11-doc",),
        license="PSF-2.0 (Python documentation; code examples also 0BSD)",
        role="train",
        description="The Python 3.11 documentation: tutorial, library and language reference, HOWTOs (reST sources).",
        files=(Files("usr/share/doc/python3.11/html/_sources/*.rst.txt", "rst",
                     exclude=("*/whatsnew/changelog.rst.txt",)),),
        note="The generated changelog is left out: it is a list of issue titles.",
    ),
    Corpus(
        name="manpages",
        packages=("manpages=6.03-2", "manpages-dev=6.03-2"),
        license="Linux-man-pages-copyleft, GPL-2.0+, BSD or MIT (each page's SPDX line; most are the "
                "first, a verbatim-copying licence)",
        role="train",
        description="The Linux man-pages project: sections 1-8, system calls and C library functions included.",
        files=(Files("usr/share/man/man*/*.gz", "roff"),),
        note="roff is stripped by a small stripper: requests dropped, font escapes removed, tables (tbl) left out.",
    ),
    Corpus(
        name="perl-docs",
        packages=("perl-doc",),
        license="GPL-1.0+ or Artistic-1.0 (Perl's documentation)",
        role="train",
        description="Perl 5.36's core documentation (perlfunc, perlop, perlre, the FAQs, tutorials, ...), POD.",
        files=(Files("usr/share/perl/5.*/pod/*.pod", "pod", exclude=("*/perl5*delta.pod", "*/perltoc.pod")),),
        note="Release notes (perl5*delta) and the table of contents are left out: they are lists, not prose.",
    ),
    Corpus(
        name="postgresql-docs",
        packages=("postgresql-doc-15",),
        license="PostgreSQL (a permissive BSD/MIT-like licence)",
        role="train",
        description="The PostgreSQL 15 manual: tutorial, SQL reference, server administration, internals (HTML).",
        files=(Files("usr/share/doc/postgresql-doc-15/html/*.html", "html", exclude=("*/release-*.html",)),),
        note="Release notes are left out: they are lists of changes.",
    ),
    Corpus(
        name="django-docs",
        packages=("python-django-doc",),
        license="BSD-3-Clause (Django's documentation)",
        role="train",
        description="The Django 3.2 documentation: tutorials, topic guides, how-tos and reference (HTML).",
        files=(Files("usr/share/doc/python-django-doc/html/*.html", "html",
                     exclude=("*/_modules/*", "*/releases/*", "*/genindex.html", "*/py-modindex.html",
                              "*/search.html", "*/contents.html", "*/index.html")),),
        note="Highlighted module sources (_modules), release notes and index pages are left out.",
    ),
    Corpus(
        name="sqlite-docs",
        packages=("sqlite3-doc",),
        license="public domain (SQLite and its documentation)",
        role="train",
        description="The SQLite documentation: SQL language, C interface, file format, design notes (HTML).",
        files=(Files("usr/share/doc/sqlite3/*.html", "html",
                     exclude=("*/releaselog/*", "*/changes.html", "*/chronology.html", "*/sitemap.html",
                              "*/keyword_index.html", "*/doclist.html")),),
        note="Release logs, the change history and index pages are left out.",
    ),
    Corpus(
        name="git-docs",
        packages=("git-doc",),
        license="GPL-2.0 (Git's documentation)",
        role="train",
        description="Git's documentation: command manuals, the user manual, guides and technical notes (AsciiDoc).",
        files=(Files("usr/share/doc/git-doc/*.txt", "text", exclude=("*/RelNotes/*",)),),
        note="AsciiDoc is kept as it reads, like reST; release notes are left out.",
    ),
    Corpus(
        name="sqlalchemy-docs",
        packages=("python-sqlalchemy-doc",),
        license="MIT (SQLAlchemy's documentation)",
        role="train",
        description="The SQLAlchemy 1.4 documentation: ORM and Core tutorials, narrative guides (reST sources).",
        files=(Files("usr/share/doc/python-sqlalchemy-doc/rst/*.rst", "rst", exclude=("*/changelog/*",)),),
        note="Changelogs are left out.",
    ),
    Corpus(
        name="debian-books",
        packages=("debian-handbook=11.20220922", "debian-reference-en=2.100", "developers-reference=12.18",
                  "maint-guide=1.2.53"),
        license="GPL-2.0+ or CC-BY-SA-3.0 (debian-handbook); GPL-2.0+ (debian-reference, maint-guide); "
                "GPL-2.0 (developers-reference)",
        role="validation",
        description="Four books of the Debian project, English editions: The Debian Administrator's Handbook "
                    "(Debian 11), the Debian Reference, the Developer's Reference and the New Maintainers' Guide.",
        files=(Files("usr/share/doc/debian-handbook/html/en-US/*.html", "html",
                     exclude=("*/Common_Content/*", "*/index.html", "*/ix01.html")),
               Files("usr/share/debian-reference/*.en.html", "html", exclude=("*/index.en.html",)),
               Files("usr/share/developers-reference/*.html", "html",
                     exclude=("*/index.html", "*/search.html", "*/developers-reference.html")),
               Files("usr/share/doc/maint-guide/html/*.en.html", "html", exclude=("*/index.en.html",))),
        note=("Held out: book prose from a project none of the training corpora comes from. Tables of contents "
              "and the one-page edition of the Developer's Reference (a copy of its chapters) are left out. "
              "Versions are pinned so the held-out set stays the same; none of these packages gets security "
              "updates in Debian 12."),
    ),
)}


# --- markup strippers ------------------------------------------------------------------------------------------------

_ROFF_NAMED = {"em": "—", "en": "–", "hy": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
               "bu": "•", "co": "©", "rg": "®", "tm": "™", "de": "°", "mu": "×", "di": "÷", "+-": "±", "<=": "≤",
               ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "ti": "~", "ha": "^", "rs": "\\", "ba": "|", "sl": "/",
               "dg": "†", "sc": "§", "pl": "+", "mi": "-", "eq": "=", "fo": "«", "fc": "»", "Fo": "«", "Fc": "»"}
_ROFF_FONT_MACROS = {"B", "I", "SM", "SB"}
_ROFF_ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}
_ROFF_HEADINGS = {"SH", "SS"}
_ROFF_BREAKS = {"PP", "LP", "P", "TP", "IP", "HP", "TQ", "sp", "br", "RS", "RE", "in", "ti", "nf", "fi", "EX", "EE"}


def _roff_escapes(text: str) -> str:
    def named(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return _ROFF_NAMED.get(name, "")

    text = re.sub(r"\\f(?:\[[^\]]*\]|\(..|.)", "", text)  # font changes
    text = re.sub(r"\\s[-+]?\d", "", text)  # size changes
    text = re.sub(r"\\\*?(?:\((..)|\[([^\]]*)\])|\\\*(.)", named, text)  # \(em, \[em], \*(lq, \*R
    text = text.replace("\\-", "-").replace("\\e", "\\").replace("\\~", " ").replace("\\ ", " ").replace("\\0", " ")
    text = re.sub(r"\\[&|^:%)c]", "", text)  # zero-width and hyphenation marks
    text = re.sub(r"\\[hvwlLkoznxHSbNZX]'[^']*'", "", text)  # motions and other escapes taking an argument
    return text.replace("\\\\", "\\")


def _roff_args(line: str) -> list[str]:
    return [a[1:-1] if len(a) > 1 and a[0] == a[-1] == '"' else a for a in re.findall(r'"[^"]*"|\S+', line)]


def strip_roff(source: str) -> str:
    """A man page's text: filled lines joined into paragraphs (roff fills them; keeping the source's line breaks would
    split sentences at every font change), no-fill blocks kept line by line, headings and list tags on lines of their
    own, escapes resolved to characters, comments and requests dropped, tables left out."""
    out: list[str] = []
    paragraph: list[str] = []
    state = {"nofill": False, "tag_next": False, "table": False}

    def flush(blank: bool = True) -> None:
        if paragraph:
            out.append(" ".join(paragraph))
            paragraph.clear()
        if blank:
            out.append("")

    def emit(text: str) -> None:
        if state["tag_next"]:  # the line after .TP is the item's tag
            flush(blank=False)
            out.append(text)
            state["tag_next"] = False
        elif state["nofill"]:
            out.append(text)
        elif text.strip():
            paragraph.append(text.strip())
        else:
            flush()

    source = re.sub(r"(?<!\\)\\\n", "", source)  # an escaped newline continues the line
    for raw in source.splitlines():
        if raw.startswith(('.\\"', "'\\\"", '\\"')) or raw.strip() in (".", "'"):
            continue
        if state["table"]:
            state["table"] = not raw.startswith(".TE")
            continue
        if not raw.startswith((".", "'")):
            emit(_roff_escapes(raw))
            continue
        request, _, rest = raw[1:].strip().partition(" ")
        if request == "TS":
            flush()
            state["table"] = True
        elif request in _ROFF_HEADINGS:
            flush()
            heading = _roff_escapes(" ".join(_roff_args(rest)))
            out.append(heading.upper() if request == "SH" else heading)
        elif request in _ROFF_FONT_MACROS:
            emit(_roff_escapes(" ".join(_roff_args(rest))))
        elif request in _ROFF_ALTERNATING:
            emit(_roff_escapes("".join(_roff_args(rest))))
        elif request in ("nf", "EX"):
            flush()
            state["nofill"] = True
        elif request in ("fi", "EE"):
            flush()
            state["nofill"] = False
        elif request in ("PP", "LP", "P", "HP", "sp", "RS", "RE"):
            flush()
        elif request == "br":
            flush(blank=False)
        elif request in ("TP", "TQ"):
            flush(blank=request == "TP")
            state["tag_next"] = True
        elif request == "IP":
            flush()
            tag = _roff_args(rest)[0] if rest.strip() else ""
            if tag and tag not in ("\\(bu", "*", "-", "\\[bu]"):
                out.append(_roff_escapes(tag))
        # .TH, .so, .de, .ds, .ie, .ad, .nh and the rest carry no prose
    flush()
    return _tidy("\n".join(out))


# B<< x->y >> (spaced, for text holding angle brackets) or the innermost B<x>
_POD_CODE = re.compile(r"([BICLEFSXZ])<{2,}\s(.*?)\s>{2,}|([BICLEFSXZ])<([^<>]*)>", re.DOTALL)


def _pod_inline(text: str) -> str:
    def code(m: re.Match) -> str:
        kind, inner = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if kind in "XZ":
            return ""
        if kind == "E":
            entity = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}.get(inner)
            return entity if entity else html.unescape(f"&{inner};") if not inner.isdigit() else chr(int(inner))
        if kind == "L":
            inner = inner.split("|", 1)[0] if "|" in inner else inner
            return inner.replace('"', "").replace("/", " ").strip()
        return inner

    for _ in range(6):  # codes nest (B<C<...>>); resolve innermost first until none is left
        new = _POD_CODE.sub(code, text)
        if new == text:
            break
        text = new
    return text


def strip_pod(source: str) -> str:
    """POD's text: headings and items kept as lines, formatting codes resolved, ``=begin``/``=for`` blocks and
    everything outside ``=pod``...``=cut`` (code) dropped."""
    out: list[str] = []
    in_pod = False
    skip_block = False
    for para in re.split(r"\n\s*\n", source):
        stripped = para.strip("\n")
        if not stripped:
            continue
        if stripped.startswith("="):
            first, _, body = stripped.partition("\n")
            command, _, rest = first[1:].partition(" ")
            rest = f"{rest} {body}".strip()
            in_pod = command != "cut"
            if command == "begin":
                skip_block = True
            elif command == "end":
                skip_block = False
            elif (command.startswith("head") or command == "item") and not skip_block:
                rest = rest.lstrip("*").strip()  # a bullet item's marker
                if rest:
                    out.append(_pod_inline(rest))
            continue  # =over, =back, =for, =encoding: layout, no text
        if not in_pod or skip_block:
            continue
        # verbatim paragraphs (indented) are code or examples: kept as they are, like reST literal blocks
        out.append(stripped if stripped[0] in " \t" else _pod_inline(stripped))
    return _tidy("\n\n".join(out))


_HTML_SKIP_TAGS = {"script", "style", "head", "nav", "noscript", "svg", "button", "form"}
# navigation, banners and index terms of DocBook (publican, PostgreSQL), Sphinx and SQLite pages
_HTML_SKIP_CLASSES = {"navheader", "navfooter", "docnav", "indexterm", "sphinxsidebar", "related", "footer",
                      "headerlink", "toc", "breadcrumbs", "nav", "nosearch", "viewcode-link"}
_HTML_SKIP_IDS = {"banner", "title", "header", "footer", "sidebar", "hd", "ft", "global-nav", "searchbox"}
_HTML_BLOCKS = {"p", "div", "section", "article", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "pre",
                "blockquote", "tr", "table", "ul", "ol", "dl", "br", "hr", "figure", "figcaption", "caption", "td",
                "th", "body"}
_HTML_VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "param", "source", "track",
              "wbr"}


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[tuple[str, bool]] = []  # open tags and whether each hides its content
        self.hidden = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag in _HTML_BLOCKS:
            self.parts.append("\n\n" if tag in ("p", "pre", "table", "h1", "h2", "h3", "h4", "h5", "h6") else "\n")
        if tag in ("td", "th"):
            self.parts.append(" ")
        if tag in _HTML_VOID:
            return
        classes = set((a.get("class") or "").split())
        hides = tag in _HTML_SKIP_TAGS or bool(classes & _HTML_SKIP_CLASSES) or a.get("id") in _HTML_SKIP_IDS \
            or a.get("role") == "navigation"
        self.stack.append((tag, hides))
        self.hidden += hides
        self.pre += tag == "pre"

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _HTML_BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_VOID or all(t != tag for t, _ in self.stack):
            return  # a stray end tag: HTML in the wild is not always balanced
        while self.stack:
            open_tag, hides = self.stack.pop()
            self.hidden -= hides
            self.pre -= open_tag == "pre"
            if open_tag == tag:
                break
        if tag in _HTML_BLOCKS:
            self.parts.append("\n\n" if tag in ("p", "pre", "table", "h1", "h2", "h3", "h4", "h5", "h6") else "\n")

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def strip_html(source: str) -> str:
    """An HTML page's visible text: block elements become line breaks, ``<pre>`` keeps its layout, and scripts,
    styles, the head and navigation are dropped."""
    parser = _HtmlText()
    parser.feed(source)
    parser.close()
    # whitespace between tags leaves a space at the start of paragraphs
    return _tidy(re.sub(r"(^|\n) (?=\S)", r"\1", "".join(parser.parts)))


_RST_ROLE = re.compile(r":[\w:.+-]+:`(?:([^`<]*?)\s*<[^`>]*>|~?!?([^`]*))`")


def strip_rst(source: str) -> str:
    """reST kept as it reads (headings, lists and literal blocks are plain text), less what no reader sees: comments,
    link targets, substitution definitions and directive options; roles become their text."""
    out: list[str] = []
    in_comment = False
    for line in source.splitlines():
        if in_comment:
            if line.strip() and not line[0].isspace():
                in_comment = False
            else:
                continue
        stripped = line.strip()
        if stripped.startswith(".. ") and not re.match(r"\.\. [\w:-]+::", stripped) or stripped == "..":
            in_comment = not stripped.startswith(".. |")  # a comment's indented body goes with it
            continue
        if re.match(r"\s+:[\w -]+:(\s|$)", line) and out and (out[-1].lstrip().startswith((".. ", ":"))):
            continue  # directive options (:maxdepth: 2) under a directive
        out.append(_RST_ROLE.sub(lambda m: m.group(1) or m.group(2) or "", line))
    return _tidy("\n".join(out))


def strip_text(source: str) -> str:
    return _tidy(source)


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\xa0", " ").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


STRIPPERS: dict[str, Callable[[str], str]] = {
    "rst": strip_rst, "text": strip_text, "html": strip_html, "roff": strip_roff, "pod": strip_pod}


_ADORNMENT_LINE = re.compile(r"^[-=~^*+#|:._`'\"<>/\\ \t]+$", re.MULTILINE)


def prose_share(text: str) -> float:
    """Letters over visible characters, heading underlines and table rules aside (they are layout, not code): about
    0.9 for English prose, under 0.7 for code, hex dumps and tables of numbers."""
    visible = re.sub(r"\s", "", _ADORNMENT_LINE.sub("", text))
    return sum(c.isalpha() for c in visible) / len(visible) if visible else 0.0


# --- download, unpack, select ----------------------------------------------------------------------------------------

def _package_name(spec: str) -> str:
    return spec.split("=", 1)[0]


def download_package(spec: str, cache: Path) -> Path:
    """The ``.deb`` of ``spec`` (``name`` or ``name=version``): from ``cache`` when a matching file is there, else
    fetched into it with ``apt-get download``."""
    name, _, version = spec.partition("=")
    cache.mkdir(parents=True, exist_ok=True)
    quoted_version = version.replace(":", "%3a")
    cached = sorted(cache.glob(f"{name}_{quoted_version or '*'}_*.deb"))
    if cached:
        return cached[-1]
    if shutil.which("apt-get") is None:
        raise CorpusError(f"package {spec}: apt-get is not on this machine (a Debian or Ubuntu system is needed), "
                          f"and no {name}_*.deb is cached in {cache}")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        proc = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True, check=False)
        debs = sorted(Path(tmp).glob(f"{name}_*.deb"))
        if proc.returncode != 0 or not debs:
            detail = "; ".join(line for line in proc.stderr.splitlines() if line.startswith("E:")) or proc.stderr
            raise CorpusError(f"package {spec}: apt-get download failed ({detail.strip() or 'no .deb written'}); "
                              "is the network or the Debian mirror reachable, and has 'apt-get update' been run?")
        target = cache / debs[-1].name
        os.replace(debs[-1], target)
    return target


def deb_version(deb: Path) -> str:
    proc = subprocess.run(["dpkg-deb", "--field", str(deb), "Version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or deb.name.split("_")[1]


def unpack_deb(deb: Path, cache: Path) -> Path:
    """``deb`` unpacked once into ``cache/<deb stem>/`` (later builds reuse it)."""
    root = cache / deb.name.removesuffix(".deb")
    if (root / ".unpacked").exists():
        return root
    if shutil.which("dpkg-deb") is None:
        raise CorpusError(f"{deb.name}: dpkg-deb is not on this machine (install dpkg)")
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{root.name}."))
    try:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CorpusError(f"{deb.name}: dpkg-deb -x failed: {proc.stderr.strip()}")
        (tmp / ".unpacked").touch()
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _read(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # older man pages and POD predate UTF-8


def _matches(relative: str, rule: Files) -> bool:
    return fnmatch.fnmatchcase(relative, rule.pattern) and \
        not any(fnmatch.fnmatchcase(relative, ex) for ex in rule.exclude)


def _candidates(roots: list[Path], corpus: Corpus) -> Iterator[tuple[str, Path, str]]:
    """(relative path, file, markup) of every file a rule selects, in sorted path order so a cap is deterministic."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue  # links duplicate their target (man page aliases, shared CSS)
            relative = path.relative_to(root).as_posix()
            rule = next((r for r in corpus.files if _matches(relative, r)), None)
            if rule is not None:
                found.append((relative, path, rule.markup))
    yield from sorted(found)


@dataclass
class BuildStats:
    files: int = 0
    kept: int = 0
    characters: int = 0
    tiny: int = 0
    code_heavy: int = 0
    duplicates: int = 0
    over_cap: int = 0


def documents(corpus: Corpus, roots: list[Path], stats: BuildStats) -> Iterator[str]:
    """The cleaned documents of the unpacked packages at ``roots``, filtered, de-duplicated and capped."""
    seen: set[str] = set()
    for _, path, markup in _candidates(roots, corpus):
        stats.files += 1
        text = STRIPPERS[markup](_read(path))
        if len(text) < corpus.min_chars:
            stats.tiny += 1
            continue
        if prose_share(text) < corpus.min_prose:
            stats.code_heavy += 1
            continue
        digest = hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()
        if digest in seen:
            stats.duplicates += 1
            continue
        seen.add(digest)
        if corpus.max_chars is not None and stats.characters + len(text) > corpus.max_chars:
            stats.over_cap += 1
            continue
        stats.kept += 1
        stats.characters += len(text)
        yield text


def _write_gzip(path: Path, lines: Iterator[str]) -> None:
    def write(raw) -> None:
        # mtime 0 and no file name: the same packages always give the same bytes
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            for line in lines:
                gz.write(line.encode("utf-8"))

    write_through_temp(path, write, binary=True)


def build_corpus(name: str, out_dir: str | Path, cache: str | Path | None = None) -> Path:
    """Build corpus ``name`` into ``out_dir/<name>.jsonl.gz`` (and ``<name>.SOURCE.md``) and return its path.
    Packages are downloaded and unpacked into ``cache`` (default ``~/.cache/engram-lab/corpora``)."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))}")
    corpus = CORPORA[name]
    cache = Path(cache) if cache is not None else DEFAULT_CACHE
    out_dir = Path(out_dir)
    debs = [download_package(spec, cache) for spec in corpus.packages]
    roots = [unpack_deb(deb, cache) for deb in debs]
    stats = BuildStats()
    target = out_dir / f"{name}.jsonl.gz"
    _write_gzip(target, (json.dumps({"text": text}, ensure_ascii=False) + "\n"
                         for text in documents(corpus, roots, stats)))
    if stats.kept == 0:
        target.unlink()
        raise CorpusError(f"corpus {name}: no document survived selection in {', '.join(d.name for d in debs)}")
    versions = [(_package_name(spec), deb_version(deb), deb.name) for spec, deb in zip(corpus.packages, debs)]
    write_text_atomic(out_dir / f"{name}.SOURCE.md", source_note(corpus, versions, stats, target))
    return target


def source_note(corpus: Corpus, versions: list[tuple[str, str, str]], stats: BuildStats, target: Path) -> str:
    lines = [f"# {corpus.name}", "", corpus.description, "",
             f"- role: {corpus.role}" + (" (held out: never mix into training)" if corpus.role == "validation" else ""),
             f"- license: {corpus.license}",
             "- packages (Debian, `apt-get download`): " + ", ".join(f"{p} {v} (`{f}`)" for p, v, f in versions),
             f"- file: `{target.name}`, one JSON object `{{\"text\": ...}}` a line, {target.stat().st_size:,} bytes",
             f"- documents: {stats.kept:,}; characters: {stats.characters:,}",
             "", "## How it was built", "",
             (f"`engram-lab corpus {corpus.name} --out DIR` (experiments/corpora.py). Files selected, in sorted "
              "path order:"), ""]
    lines += [f"- `{r.pattern}` as {r.markup}" + (f", except {', '.join(f'`{e}`' for e in r.exclude)}"
                                                   if r.exclude else "") for r in corpus.files]
    lines += ["", f"Of {stats.files:,} files: {stats.tiny:,} dropped as tiny (under {corpus.min_chars} characters "
              f"after stripping), {stats.code_heavy:,} as code-heavy (letters under "
              f"{corpus.min_prose:.0%} of visible characters), {stats.duplicates:,} as exact duplicates (case and "
              f"whitespace ignored)" + (f", {stats.over_cap:,} past the cap of {corpus.max_chars:,} characters"
                             if corpus.max_chars else "") + f"; {stats.kept:,} kept."]
    if corpus.note:
        lines += ["", corpus.note]
    return "\n".join(lines) + "\n"
