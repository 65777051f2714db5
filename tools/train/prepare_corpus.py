#!/usr/bin/env python3
"""Extract the King James Bible from Debian's bible-kjv-text package into a training corpus.

The package stores the text in a compressed custom format (/usr/lib/bible.data); the `bible`
program from package bible-kjv prints it.  We print every verse once (Genesis 1:1 to
Revelation 22:21 with no line wrapping), parse book / chapter / verse, and write:

  <out>/kjv_verses.tsv   book<TAB>chapter<TAB>verse<TAB>text, every verse (structure kept)
  <out>/train.txt        training books: verses one per line, a blank line between chapters,
                         and the literal token <|endoftext|> on its own line between books
  <out>/heldout.txt      held-out books in the same layout but WITHOUT <|endoftext|>
                         (plain text, so any tokenizer can score it); no model trains on it
  <out>/corpus_info.json source, licence, package version, sizes, held-out books

Usage: python3 tools/train/prepare_corpus.py --out build/corpus
"""
import argparse
import hashlib
import json
import re
import subprocess

# Whole books that no model ever trains on (about 4% of the text).
HELDOUT_BOOKS = ["Ruth", "Ecclesiastes", "Lamentations", "Jonah", "Philippians", "Hebrews", "James", "1 John"]

HEADER_RE = re.compile(r"^(\S.*) (\d+)$")
VERSE_RE = re.compile(r"^\s+(\d+) (.*)$")


def package_version(pkg):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def read_bible():
    raw = subprocess.run(["bible", "-l0", "gen1:1-rev22:21"], check=True,
                         capture_output=True, text=True).stdout
    verses = []  # (book, chapter, verse, text)
    book, chap = None, None
    for line in raw.split("\n"):
        if not line.strip():
            continue
        m = VERSE_RE.match(line)
        if m:
            if book is None:
                raise SystemExit("verse before any chapter header: %r" % line)
            verses.append((book, chap, int(m.group(1)), m.group(2).strip()))
            continue
        m = HEADER_RE.match(line)
        if m:
            book, chap = m.group(1), int(m.group(2))
            continue
        raise SystemExit("unparsed line: %r" % line)
    return verses


def layout(verses, eos_between_books):
    """Verses one per line, blank line between chapters, optional <|endoftext|> between books."""
    out = []
    prev_book, prev_chap = None, None
    for book, chap, _, text in verses:
        if prev_book is not None and book != prev_book:
            out.append("\n<|endoftext|>\n" if eos_between_books else "\n")
        elif prev_chap is not None and chap != prev_chap:
            out.append("\n")
        out.append(text + "\n")
        prev_book, prev_chap = book, chap
    return "".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build/corpus")
    args = ap.parse_args()
    import os
    os.makedirs(args.out, exist_ok=True)

    verses = read_bible()
    if len(verses) != 31102:
        raise SystemExit("expected 31102 verses, got %d" % len(verses))
    books = []
    for v in verses:
        if not books or books[-1] != v[0]:
            books.append(v[0])
    for b in HELDOUT_BOOKS:
        if b not in books:
            raise SystemExit("unknown held-out book %s" % b)

    with open(os.path.join(args.out, "kjv_verses.tsv"), "w", encoding="utf-8") as f:
        for book, chap, verse, text in verses:
            f.write("%s\t%d\t%d\t%s\n" % (book, chap, verse, text))
    train_v = [v for v in verses if v[0] not in HELDOUT_BOOKS]
    held_v = [v for v in verses if v[0] in HELDOUT_BOOKS]
    train_txt = layout(train_v, True)
    held_txt = layout(held_v, False)
    with open(os.path.join(args.out, "train.txt"), "w", encoding="utf-8") as f:
        f.write(train_txt)
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(held_txt)

    total_chars = sum(len(v[3]) for v in verses)
    held_chars = sum(len(v[3]) for v in held_v)
    info = {
        "source": "Debian package bible-kjv-text (printed with the `bible` program of package bible-kjv)",
        "package": "bible-kjv-text",
        "package_version": package_version("bible-kjv-text"),
        "reader_package_version": package_version("bible-kjv"),
        "licence": ("public domain: the King James Version (1611) is out of copyright (see "
                    "/usr/share/doc/bible-kjv-text/copyright: \"The copyright for the King James Version text of the "
                    "Bible is expired\"; the data file itself is provided for unrestricted use)"),
        "books": len(books),
        "verses": len(verses),
        "verse_text_chars": total_chars,
        "heldout_books": HELDOUT_BOOKS,
        "heldout_verses": len(held_v),
        "heldout_verse_text_chars": held_chars,
        "heldout_fraction_chars": round(held_chars / total_chars, 4),
        "train_txt_bytes": len(train_txt.encode("utf-8")),
        "heldout_txt_bytes": len(held_txt.encode("utf-8")),
        "heldout_txt_sha256": hashlib.sha256(held_txt.encode("utf-8")).hexdigest(),
        "train_txt_sha256": hashlib.sha256(train_txt.encode("utf-8")).hexdigest(),
    }
    with open(os.path.join(args.out, "corpus_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
