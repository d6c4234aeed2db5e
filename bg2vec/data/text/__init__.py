"""Wikitext to plain text and sections with mwparserfromhell, and the markup that survives it (residue)."""
