"""Preparing a Wikipedia dump for training (``jobs/prepare.py``), one folder per concern:

- ``dumps/``: finding, downloading and verifying dumps, and reading their pages (bz2 multistream ranges,
  a Ray Data datasource);
- ``text/``: wikitext to plain text and sections (mwparserfromhell), and what markup survives;
- ``tokens/``: training a tokenizer and packing token blocks;
- this folder: the Ray Data pipeline on top (``pipeline``, ``stages``, ``sinks``), its config, the splits
  and the prepared directory's layout (``output_dir``).
"""
