"""Wikitext cleaning: what is kept, what is removed, and pathological pages."""

from __future__ import annotations

import bz2
import xml.etree.ElementTree as ET

import pytest

from bg2vec.data.config import CleaningConfig
from bg2vec.data.text import markup_spans
from bg2vec.data.text.residue import residue_counts, residue_rate
from bg2vec.data.text.wikitext import WikitextCleaner
from conftest import SAMPLE_DUMP

BG_NAMESPACES = {-2: "Медия", 6: "Файл", 14: "Категория"}


def clean(wikitext: str, namespaces=None, **cfg):
    return WikitextCleaner(CleaningConfig(min_text_chars=0, **cfg), namespaces or BG_NAMESPACES).clean(wikitext)


def text(wikitext: str, **kw) -> str:
    return clean(wikitext, **kw).text


def test_links_keep_their_visible_text():
    assert text("[[Стара планина|Балкана]] и [[Рила]]") == "Балкана и Рила"
    assert text("много [[град]]ове") == "много градове"  # link trail
    assert text("виж [[София#История|историята]] и [[София#Име]]") == "виж историята и София"
    assert text("[[Искър (река)|]] тече") == "Искър тече"  # pipe trick
    assert text("[[wikt:дума|дума]] и [[:Категория:Реки]]") == "дума и Категория:Реки"


def test_templates_are_removed_at_any_depth():
    wikitext = ("{{Селище\n| име = София\n| карта = {{Карта|{{coord|42|23|{{x|y}}}}}}\n}}\n"
                "'''София''' е столица{{Факт}}.{{Области на България}}")
    assert text(wikitext) == "София е столица."


def test_text_bearing_templates_keep_their_text():
    assert text("Обединеното кралство ({{lang|en|United Kingdom}}) е държава") == \
        "Обединеното кралство (United Kingdom) е държава"
    assert text("{{lang-de|Bulgarien}} е името, {{nowrap|10 km}} дълго") == "Bulgarien е името, 10 km дълго"


def test_references_are_removed_with_their_content():
    wikitext = ('Текст.<ref name="a">{{цитат уеб|url=http://x.bg|заглавие=З}}</ref> Още<ref name="a" />'
                ' и<ref group="бел">Бележка [[връзка]].</ref> край.\n\n== Източници ==\n<references />\n{{Източници}}')
    assert text(wikitext) == "Текст. Още и край."


def test_unclosed_ref_and_template_keep_the_prose_after_them():
    wikitext = "Начало.<ref>незатворена бележка\n\nСледващ абзац {{цитат|цитиран текст. Край."
    assert text(wikitext) == "Начало.незатворена бележка\n\nСледващ абзац цитиран текст. Край."


def test_tables_and_table_only_sections_disappear():
    wikitext = ("Увод.\n\n== Население ==\n{| class=\"wikitable\"\n! Година !! Жители\n|-\n| 1880 || 20 000"
                "\n{|\n| вложена\n|}\n|}\n\n== История ==\nТекст за историята.\n"
                "<table><tr><td>HTML</td></tr></table>")
    assert text(wikitext) == "Увод.\n\nИстория\n\nТекст за историята."


@pytest.mark.parametrize("link", [
    "[[Файл:Sofia.jpg|мини|200px|Изглед към [[София]] с {{lang|en|Vitosha}}]]",
    "[[Картинка:Sofia.jpg|мини]]", "[[Изображение:a.png]]", "[[Медия:Химн.ogg]]",
    "[[File:Sofia.jpg|thumb|caption [[Link]]]]", "[[Image:Sofia.jpg]]", "[[файл:малка буква.jpg]]",
    "<gallery>\nFile:A.jpg|Надпис\nFile:B.jpg\n</gallery>",
])
def test_media_links_and_galleries_vanish_with_captions(link):
    assert text(f"Преди {link} след.") == "Преди след."


def test_namespace_names_come_from_the_dumps_siteinfo():
    wikitext = "Vor [[Datei:Berlin.jpg|miniatur|Bild]] nach.[[Kategorie:Stadt]]"
    page = clean(wikitext, namespaces={6: "Datei", 14: "Kategorie"})
    assert page.text == "Vor nach."
    assert page.categories == ["Stadt"]


def test_categories_are_collected_not_printed():
    page = clean("Текст.\n[[Категория:Реки в България|Искър]]\n[[Category:Rivers]]\n[[категория:Реки]]")
    assert page.text == "Текст."
    assert page.categories == ["Реки в България", "Rivers", "Реки"]


def test_interlanguage_links_are_dropped():
    assert text("Текст.\n[[en:Sofia]]\n[[de:Sofia]]\n[[zh-min-nan:Sofia]]\n[[simple:Sofia]]") == "Текст."


def test_headings_are_section_breaks_and_reference_sections_are_dropped():
    wikitext = ("Увод.\n== История ==\n=== Древност ===\nТраки.\n=== Празна ===\n{{Main|X}}\n"
                "== Вижте също ==\n* [[Пловдив]]\n=== Подсекция на Вижте също ===\nизпуснато\n"
                "== Външни препратки ==\n* [http://x.bg Сайт]\n== География ==\nПланини.")
    assert text(wikitext) == "Увод.\n\nИстория\n\nДревност\n\nТраки.\n\nГеография\n\nПланини."


def test_literature_below_level_two_is_content():
    assert text("== Култура ==\n=== Литература ===\nВазов пише.") == "Култура\n\nЛитература\n\nВазов пише."


def test_lists_keep_their_text_one_item_per_line():
    wikitext = "Списък:\n* едно [[две]]\n** вложено\n*** по-дълбоко\n# първо\n#* смесено\n; термин\n: определение"
    assert text(wikitext) == "Списък:\nедно две\nвложено\nпо-дълбоко\nпърво\nсмесено\nтермин\nопределение"


def test_formatting_entities_comments_and_magic_words():
    wikitext = ("__TOC__\n'''Удебелен''' и ''курсив'' и '''''двете'''''&nbsp;&ndash; &#1041;&#x41;"
                "<!-- скрито\nна два реда --> <span style=\"color:red\">цвят</span><br />ред"
                "<small>малко</small> m<sup>2</sup> <nowiki>[[буквално]]</nowiki> __NOTOC__")
    assert text(wikitext) == "Удебелен и курсив и двете – БA цвят\nредмалко m2 буквално"


def test_math_code_and_bare_urls_are_not_prose():
    wikitext = ("Формула <math>\\frac{{a}}{b}</math> и код <syntaxhighlight lang=\"py\">x = {{1}}"
                "</syntaxhighlight> и http://example.bg и [http://example.bg сайт] и [http://example.bg].")
    assert text(wikitext) == "Формула и код и и сайт и."


def test_empty_brackets_left_by_removed_templates_are_removed():
    assert text("Марица ({{lang-el|Έβρος}}{{ref|x}}; {{Факт}}) е река") == "Марица (Έβρος) е река"
    assert text("Река ({{bg-lat|Iskar}}) е") == "Река е"


@pytest.mark.parametrize("wikitext, is_redirect", [
    ("#REDIRECT [[София]]", True), ("#пренасочване [[София]]", True), ("#Пренасочване[[X]]", True),
    ("  #redirect: [[X]]", True), ("#ПРЕНАСОЧВАНЕ [[X#Y]]", True), ("#виж [[X]]", True),
    ("#Номер едно в списък", False), ("Текст #REDIRECT [[X]]", False),
])
def test_redirects(wikitext, is_redirect):
    assert WikitextCleaner(CleaningConfig()).is_redirect(wikitext) is is_redirect


@pytest.mark.parametrize("wikitext", [
    "'''Марица''' може да означава:\n* [[Марица (река)]]\n{{Пояснителна страница}}",
    "* [[Балкан]]\n{{пояснителна страница}}", "* [[A]]\n{{Disambig}}", "* [[A]]\n{{ disambiguation |x}}",
    "* [[A]]\n__DISAMBIG__",
])
def test_disambiguation_pages_are_skipped(wikitext):
    assert clean(wikitext).skip_reason == "disambiguation"


def test_skip_reasons_for_short_empty_and_large_pages():
    assert clean("{{Инфокутия}}\n[[Категория:X]]").skip_reason == "empty"
    cleaner = WikitextCleaner(CleaningConfig(min_text_chars=50, max_page_chars=1000))
    short = cleaner.clean("Кратко мъниче.")
    assert (short.skip_reason, short.text) == ("too_short", "Кратко мъниче.")
    assert cleaner.clean("дума " * 300).skip_reason == "too_large"


# Inputs that make mwparserfromhell's tokenizer quadratic or worse (0.7.2 needs 250 s for 80k
# characters of unclosed templates): each must come back, and keep its readable text.
PATHOLOGICAL = {
    "unclosed_templates": "{{a|" * 20000,
    "unclosed_links": "[[a|" * 20000,
    "unclosed_tags": "<div>" * 20000,
    "unclosed_refs": "<ref>x " * 20000,
    "unclosed_external_links": "[http://x.org " * 20000,
    "deep_templates": "{{a|" * 5000 + "x" + "}}" * 5000,
    "deep_links": "[[a|" * 3000 + "]]" * 3000,
    "huge_table": "{|\n" + "|-\n| a || b || c\n" * 50000 + "|}\n",
    "mixed": "{{[[<ref>{|''" * 20000,
    "link_in_link": "[[a|[[b|" * 10000,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_pages_do_not_stall(name):
    # a generous time budget, so that a loaded machine cannot turn this into a timeout skip: each page must
    # come back cleaned (in seconds; the pytest timeout catches a stall) with its readable text kept
    page = clean("Увод към страницата.\n\n" + PATHOLOGICAL[name] + "\n\nКрай на страницата.", max_page_seconds=60)
    assert page.skip_reason is None
    assert page.text.startswith("Увод към страницата.")
    assert page.text.endswith("Край на страницата.")


def test_time_budget_skips_the_page():
    cleaner = WikitextCleaner(CleaningConfig(max_page_seconds=1e-9))
    assert cleaner.clean("Абзац.\n\n" * 5000).skip_reason == "timeout"


def test_balanced_scanners_cut_only_outermost_spans():
    names: list[str] = []
    assert markup_spans.strip_templates("a {{b {{c}} d}} e {{f}}", names) == "a  e "
    assert names == ["b", "f"]
    names.clear()
    assert markup_spans.strip_templates("x }} {{y {{z}} w", names) == "x  y  w"  # stray and unclosed braces
    assert names == ["z"]
    assert markup_spans.strip_tables("a\n{|\n|b\n{|\n|c\n|}\n|}\nd") == "a\n\nd"
    assert markup_spans.strip_tables("a\n{|\n| never closed\nmore") == "a\n"
    assert markup_spans.strip_content_free_tags("a<ref>b<math>c</math>d</ref>e<ref/>f</ref>g") == "aefg"


def test_template_params_respect_nesting():
    assert markup_spans.template_params("lang|en|[[a|b]] {{x|y}}|z") == ["en", "[[a|b]] {{x|y}}", "z"]
    assert markup_spans.template_name(" Template:Пояснителна_страница |x") == "пояснителна страница"


def _articles(path):
    ns = "{http://www.mediawiki.org/xml/export-0.10/}"
    pages = {}
    for _, el in ET.iterparse(bz2.open(path)):
        if el.tag == f"{ns}page":
            if el.findtext(f"{ns}ns") == "0" and el.find(f"{ns}redirect") is None:
                pages[el.findtext(f"{ns}title")] = el.findtext(f"{ns}revision/{ns}text") or ""
            el.clear()
    return pages


def test_real_bulgarian_article(shared_dir):
    pages = _articles(shared_dir / "data/wiki/bgwiki-sample-3pages.xml.bz2")
    page = clean(pages["Григориански календар"])
    assert page.text.startswith(
        "Григорианският календар (понякога наричан и Грегориански календар, „нов стил“) е съвременният "
        "международно признат светски календар, на който се основава и международният стандарт ISO 8601.\n\n")
    assert "Григорианският календар се дели на 12 месеца по следния начин:\nянуари, 31 дни;\n" in page.text
    assert page.categories == ["Календари"]
    assert not any(residue_counts(page.text).values())


def test_real_english_dump_quality(shared_dir):
    pages = _articles(shared_dir / "data/wiki/enwiki-sample-206pages.xml.bz2")
    cleaner = WikitextCleaner(CleaningConfig())
    cleaned = {title: cleaner.clean(wikitext) for title, wikitext in pages.items()}
    anarchism = cleaned["Anarchism"]
    assert anarchism.text.startswith("Anarchism is a political philosophy that advocates self-governed "
                                     "societies based on voluntary institutions.")
    assert "Etymology and terminology\n\nThe term anarchism is a compound word" in anarchism.text
    assert "Political culture" in anarchism.categories
    kept = [p.text for p in cleaned.values() if p.skip_reason is None]
    assert len(kept) == 98
    rate, counts = residue_rate(kept)
    assert rate < 0.01, counts  # leftover markup items per 1,000 characters


def test_sections_follow_the_heading_chain_and_skip_what_the_text_drops():
    page = clean("Увод за града.\n\n== История ==\n=== Античност ===\nСердика.\n==== Римляни ====\nКонстантин.\n"
                 "=== Средновековие ===\nСредец.\n== Население ==\n{| class=\"wikitable\"\n| 1880\n|}\n"
                 "== Култура ==\nТеатри.\n== Източници ==\n<references />\nИзточник.")
    assert page.text == ("Увод за града.\n\nИстория\n\nАнтичност\n\nСердика.\n\nРимляни\n\nКонстантин.\n\n"
                         "Средновековие\n\nСредец.\n\nКултура\n\nТеатри.")
    assert page.sections == [
        {"heading_path": [], "text": "Увод за града."},
        {"heading_path": ["История", "Античност"], "text": "Сердика."},
        {"heading_path": ["История", "Античност", "Римляни"], "text": "Константин."},
        {"heading_path": ["История", "Средновековие"], "text": "Средец."},
        {"heading_path": ["Култура"], "text": "Театри."},
    ]  # "История" has no paragraph of its own; "Население" (a table) and "Източници" are gone
    assert clean("== Само ==\nТекст.\n\nОще.").sections == [{"heading_path": ["Само"], "text": "Текст.\n\nОще."}]


def _text_without_headings(page) -> str:
    """The page's text without its heading lines (the paragraphs equal to a heading of a section)."""
    headings = {h for s in page.sections for h in s["heading_path"]}
    return "\n\n".join(p for p in page.text.split("\n\n") if p not in headings)


def test_sections_of_the_sample_dump():
    root = ET.parse(SAMPLE_DUMP).getroot()
    ns = root.tag[:-len("mediawiki")]
    cleaner = WikitextCleaner(CleaningConfig(), BG_NAMESPACES)
    pages = {p.findtext(f"{ns}title"): cleaner.clean(p.findtext(f"{ns}revision/{ns}text") or "")
             for p in root.iter(f"{ns}page") if p.findtext(f"{ns}ns") == "0"}
    kept = {title: page for title, page in pages.items() if page.skip_reason is None}
    assert len(kept) == 34 and all(page.sections[0]["heading_path"] == [] for page in kept.values())
    for page in kept.values():  # the sections' texts are the page's text without its headings
        assert "\n\n".join(s["text"] for s in page.sections) == _text_without_headings(page)
    sofia = kept["София"]  # hand-checked against its wikitext (== Население == holds only a table)
    assert [s["heading_path"] for s in sofia.sections] == [
        [], ["Име"], ["История", "Античност и Средновековие"],
        ["История", "Античност и Средновековие", "Сердика и Константин Велики"], ["История", "Османско владичество"],
        ["История", "Нова история"], ["География и климат"], ["Забележителности"], ["Образование и транспорт"]]
    assert sofia.sections[0]["text"].startswith("София е столицата и най-големият град на България.")
    assert not pages["Марица"].sections  # a redirect-like or skipped page has none


def test_sections_of_the_english_excerpt(shared_dir):
    pages = _articles(shared_dir / "data/wiki/enwiki-sample-206pages.xml.bz2")
    cleaner = WikitextCleaner(CleaningConfig())
    kept = [page for page in map(cleaner.clean, pages.values()) if page.skip_reason is None]
    assert len(kept) == 98
    for page in kept:
        assert "\n\n".join(s["text"] for s in page.sections) == _text_without_headings(page)
    albedo = cleaner.clean(pages["Albedo"])  # hand-checked against its wikitext's == / === headings
    examples = "Examples of terrestrial albedo effects"
    assert [s["heading_path"] for s in albedo.sections] == [
        [], ["Terrestrial albedo"], ["Terrestrial albedo", "White-sky and black-sky albedo"], ["Astronomical albedo"],
        *([examples, h] for h in ("Illumination", "Insolation effects", "Climate and weather",
                                  "Albedo–temperature feedback", "Snow", "Small-scale effects",
                                  "Solar photovoltaic effects", "Trees", "Water", "Clouds", "Aerosol effects",
                                  "Black carbon", "Human activities")),
        ["Other types of albedo"]]  # See also, References, External links dropped
    assert albedo.sections[9]["text"].startswith("Albedo works on a smaller scale, too. In sunlight, dark clothes")
