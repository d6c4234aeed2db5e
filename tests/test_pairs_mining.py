"""Pair mining (bg2vec.pairs.mining, .stages) and the user's pair files (bg2vec.pairs.user_pairs): no Ray."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_wikitext import _articles

from bg2vec.config import load_config
from bg2vec.data.config import CleaningConfig
from bg2vec.data.text.wikitext import WikitextCleaner
from bg2vec.errors import Bg2VecError, ConfigError
from bg2vec.pairs.config import PairsConfig
from bg2vec.pairs.mining import (
    MINERS,
    crops,
    inverse_cloze,
    mine_page,
    rng_for,
    sentence_spans,
    without_sentence,
)
from bg2vec.pairs.stages import ROW_SCHEMA, dedup_bucket, mine_pages, pair_rows
from bg2vec.pairs.user_pairs import USER_SCHEMA, read_user_pairs
from conftest import REPO, SAMPLE_DUMP

LEAD = "Рила е най-високата планина в България и на целия Балкански полуостров. Тя е част от Рило-Родопския масив."
HISTORY = ("Името идва от тракийски корен. През Средновековието там възниква Рилският манастир. "
           "Днес планината е национален парк и привлича хиляди туристи всяка година.")
PAGE = {"id": 7, "title": "Рила", "text": "(the text: not used when sections are there)",
        "sections": [{"heading_path": [], "text": LEAD},
                     {"heading_path": ["История"], "text": HISTORY},
                     {"heading_path": ["История", "Кратко"], "text": "Само това."},
                     {"heading_path": ["Природа"], "text": HISTORY.replace("Името", "Флората")}]}


def config(**overrides) -> PairsConfig:
    return PairsConfig(output="out", data="data", **{"min_positive_chars": 20, **overrides})


def test_structured_kinds_of_a_page():
    pairs, dropped = mine_page(PAGE, config(kinds=["title_lead", "section", "lead_body"]))
    by_kind = {kind: [(p.query, p.positive) for p in pairs if p.kind == kind] for kind in ("title_lead", "section",
                                                                                           "lead_body")}
    assert by_kind["title_lead"] == [("Рила", LEAD)]
    assert by_kind["section"] == [("Рила > История", HISTORY), ("Рила > Природа", PAGE["sections"][3]["text"])]
    assert by_kind["lead_body"] == [(LEAD, "\n\n".join(s["text"] for s in PAGE["sections"][1:]))]
    assert dropped == {"positive_too_short": 1}  # "Само това." under История > Кратко


def test_max_pairs_per_page_and_length_limits():
    pairs, _ = mine_page(PAGE, config(kinds=["section"], max_pairs_per_page=1, min_positive_chars=0))
    assert len(pairs) == 1
    pairs, dropped = mine_page(PAGE, config(kinds=["title_lead"], min_query_chars=5))
    assert pairs == [] and dropped == {"query_too_short": 1}  # "Рила" has 4 characters
    pairs, _ = mine_page(PAGE, config(kinds=["title_lead"], max_positive_chars=30))
    assert pairs[0].positive == "Рила е най-високата планина в"  # cut at the last space within 30 characters


def test_crops_are_two_different_spans_of_one_paragraph():
    words = " ".join(f"дума{i}" for i in range(200))
    page = {**PAGE, "sections": [{"heading_path": [], "text": words}]}
    cfg = config(kinds=["crops"], crop_words=[10, 30])
    seen, dropped = [], Counter()
    for page_id in range(40):
        pairs, page_dropped = mine_page({**page, "id": page_id}, cfg)
        dropped.update(page_dropped)
        for pair in pairs:
            assert pair.query != pair.positive and pair.query not in pair.positive and pair.positive not in pair.query
            for crop in (pair.query, pair.positive):
                assert f" {crop} " in f" {words} " and 10 <= len(crop.split()) <= 30
            seen.append(pair)
    assert len(seen) + dropped["query_in_positive"] == 40 and len(seen) >= 35  # one crop pair a page; nested: dropped
    assert crops(page, cfg, rng_for(42, 1, "crops")) == crops(page, cfg, rng_for(42, 1, "crops"))
    assert crops(page, cfg, rng_for(42, 1, "crops")) != crops(page, cfg, rng_for(43, 1, "crops"))


def test_identical_or_nested_crops_are_dropped():
    page = {**PAGE, "sections": [{"heading_path": [], "text": " ".join(["а"] * 5 + ["б"] * 5)}]}
    pairs, dropped = mine_page(page, config(kinds=["crops"], crop_words=[10, 10], min_positive_chars=1))
    assert pairs == [] and dropped == {"query_in_positive": 1}  # both crops are the whole paragraph


def test_sentences_and_inverse_cloze():
    paragraph = "Първо изречение тук. Второто „изречение“ е тук! Трето: 1879 г. е годината.\nРед от списък"
    spans = sentence_spans(paragraph)
    assert [paragraph[a:b] for a, b in spans] == ["Първо изречение тук.", "Второто „изречение“ е тук!",
                                                  "Трето: 1879 г. е годината.", "Ред от списък"]
    assert without_sentence(paragraph, spans, 1) == "Първо изречение тук. Трето: 1879 г. е годината.\nРед от списък"
    assert without_sentence(paragraph, spans, 3) == paragraph.removesuffix("\nРед от списък")
    page = {**PAGE, "sections": [{"heading_path": [], "text": paragraph}]}
    for page_id in range(20):
        (pair,) = inverse_cloze({**page, "id": page_id}, config(), rng_for(42, page_id, "inverse_cloze"))
        assert pair.query in paragraph and pair.query not in pair.positive
        assert len(pair.query.split()) >= 5  # min_sentence_words: the short sentences are never queries
        i = [paragraph[a:b] for a, b in spans].index(pair.query)
        assert pair.positive == without_sentence(paragraph, spans, i)
    single = {**PAGE, "sections": [{"heading_path": [], "text": "Само едно дълго изречение без второ до него."}]}
    assert inverse_cloze(single, config(), rng_for(42, 7, "inverse_cloze")) == []


def test_a_page_without_sections_gives_only_unstructured_kinds():
    text = f"{LEAD}\n\nИстория\n\n{HISTORY}"
    pairs, _ = mine_page({**PAGE, "text": text, "sections": None}, config(crop_words=[5, 8]))
    assert {p.kind for p in pairs} == {"crops", "inverse_cloze"}
    table = pa.table({"id": [7], "title": ["Рила"], "text": [text], "split": ["validation"]})  # an old pages file
    rows = mine_pages(table, cfg=config(crop_words=[5, 8]), n_buckets=3)
    assert rows.schema == ROW_SCHEMA
    mined = rows.filter(pa.compute.is_null(rows["dropped"]))
    assert Counter(mined["kind"].to_pylist()) == Counter(p.kind for p in pairs)
    assert set(mined["split"].to_pylist()) == {"validation"} and set(mined["page_id"].to_pylist()) == {7}
    kinds = mined["kind"].to_pylist()
    assert mined["instruction"].to_pylist() == [("" if k == "crops" else None) for k in kinds]


def _sample_pages() -> list[dict]:
    root = ET.parse(SAMPLE_DUMP).getroot()
    ns = root.tag[:-len("mediawiki")]
    cleaner = WikitextCleaner(CleaningConfig(min_text_chars=100), {-2: "Медия", 6: "Файл", 14: "Категория"})
    pages = []
    for p in root.iter(f"{ns}page"):
        wikitext = p.findtext(f"{ns}revision/{ns}text") or ""
        if p.findtext(f"{ns}ns") != "0" or cleaner.is_redirect(wikitext):
            continue
        page = cleaner.clean(wikitext)
        if page.skip_reason is None:
            pages.append({"id": int(p.findtext(f"{ns}id")), "title": p.findtext(f"{ns}title"), "text": page.text,
                          "sections": page.sections})
    return pages


def test_counts_per_kind_on_the_sample():
    pages = _sample_pages()
    cfg = load_config(PairsConfig, str(REPO / "configs/tiny/pairs.yaml"))
    kinds, dropped, candidates = Counter(), Counter(), 0
    for page in pages:
        pairs, page_dropped = mine_page(page, cfg)
        kinds.update(p.kind for p in pairs)
        dropped.update(page_dropped)
        candidates += sum(len(MINERS[kind](page, cfg, rng_for(cfg.seed, page["id"], kind))) for kind in cfg.kinds)
    assert sum(kinds.values()) + sum(dropped.values()) == candidates  # every pair kept or counted
    headed = sum(min(cfg.max_pairs_per_page, sum(1 for s in p["sections"] if s["heading_path"])) for p in pages)
    assert len(pages) == 34 and kinds["title_lead"] == kinds["lead_body"] == 34  # every sample page has a lead
    # sections: every headed section up to 4 a page, less the too short ones
    short = sum(1 for p in pages for s in p["sections"] if s["heading_path"] and len(s["text"]) < 100)
    assert kinds["section"] <= headed and kinds["section"] >= headed - short
    assert kinds["crops"] > 30 and kinds["inverse_cloze"] > 60
    assert set(dropped) <= {"positive_too_short", "query_in_positive", "query_too_short"}
    assert mine_page(pages[3], cfg) == mine_page(pages[3], cfg)  # deterministic


def test_counts_per_kind_on_the_english_excerpt(shared_dir):
    cleaner = WikitextCleaner(CleaningConfig())
    cfg = config(min_positive_chars=100)
    kinds = Counter()
    for title, wikitext in _articles(shared_dir / "data/wiki/enwiki-sample-206pages.xml.bz2").items():
        page = cleaner.clean(wikitext)
        if page.skip_reason is None and not cleaner.is_redirect(wikitext):
            pairs, _ = mine_page({"id": len(title), "title": title, "text": page.text, "sections": page.sections}, cfg)
            kinds.update(p.kind for p in pairs)
            if title == "Albedo":
                sections = {p.query for p in pairs if p.kind == "section"}
    assert sections <= {"Albedo > Terrestrial albedo", "Albedo > Examples of terrestrial albedo effects > Snow",
                        "Albedo > Terrestrial albedo > White-sky and black-sky albedo", "Albedo > Astronomical albedo",
                        *(f"Albedo > Examples of terrestrial albedo effects > {h}" for h in (
                            "Illumination", "Insolation effects", "Climate and weather", "Albedo–temperature feedback",
                            "Small-scale effects", "Solar photovoltaic effects", "Trees", "Water", "Clouds",
                            "Aerosol effects", "Black carbon", "Human activities")), "Albedo > Other types of albedo"}
    assert len(sections) == 4
    assert kinds["title_lead"] >= 90 and kinds["section"] >= 3 * 90 and min(kinds.values()) > 90


def test_duplicates_are_dropped_once_across_pages_and_kinds():
    rows = pair_rows({"query": ["а", "а", "б", "а"], "positive": ["x", "x", "x", "x"],
                      "kind": ["section", "title_lead", "section", "section"], "page_id": [9, 3, 3, 2],
                      "negatives": [[]] * 4, "instruction": [None] * 4, "split": ["train"] * 4,
                      "rank": [9, 3, 3, 2]}, n_buckets=1, dropped=Counter({"too_short": 2}))
    out = dedup_bucket(rows)
    pairs = out.filter(pa.compute.is_null(out["dropped"])).to_pylist()
    assert sorted((p["query"], p["kind"], p["page_id"]) for p in pairs) == [("а", "section", 2), ("б", "section", 3)]
    counts = out.filter(pa.compute.is_valid(out["dropped"]))
    assert dict(zip(counts["dropped"].to_pylist(), counts["count"].to_pylist())) == {"too_short": 2, "duplicate": 2}
    assert dedup_bucket(rows.slice(0, 1)).num_rows == 1  # nothing to drop


# ---------------------------------------------------------------------------------- the user's pairs

GOOD = [{"query": "Коя е най-високата планина?", "positive": LEAD},
        {"query": "Рилски манастир", "positive": HISTORY, "negatives": ["Пирин е планина."], "instruction": ""},
        {"query": "Какво е Рила?", "positive": LEAD, "negatives": None, "instruction": "Намери: ", "id": 3}]


def test_good_jsonl_and_parquet_are_read(tmp_path):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in GOOD) + "\n\n", encoding="utf-8")
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(GOOD, schema=USER_SCHEMA.append(pa.field("id", pa.int64()))), parquet)
    pq.write_table(pa.table({"query": pa.array(["q"], pa.large_string()), "positive": ["p"]}), tmp_path / "min.parquet")
    table = read_user_pairs([str(jsonl), str(parquet), str(tmp_path / "min.parquet")])
    rows = table.to_pylist()
    expected = [{"query": r["query"], "positive": r["positive"], "negatives": r.get("negatives") or [],
                 "instruction": r.get("instruction")} for r in GOOD]
    assert rows == expected + expected + [{"query": "q", "positive": "p", "negatives": [], "instruction": None}]


@pytest.mark.parametrize(("line", "message"), [
    ('{"query": "q"', "line 2: invalid JSON"),
    ('["q", "p"]', "line 2: a JSON object is expected, got list"),
    ('{"positive": "p"}', "line 2: field 'query' is missing"),
    ('{"query": "q", "positive": 3}', "line 2: field 'positive' must be a string, got int"),
    ('{"query": " ", "positive": "p"}', "line 2: field 'query' is an empty string"),
    ('{"query": "q", "positive": "p", "negatives": "n"}', "line 2: field 'negatives' must be a list of non-empty"),
    ('{"query": "q", "positive": "p", "negatives": ["n", ""]}', "line 2: field 'negatives' must be a list"),
    ('{"query": "q", "positive": "p", "instruction": 1}', "line 2: field 'instruction' must be a string, got int"),
])
def test_bad_jsonl_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD[0], ensure_ascii=False) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(Bg2VecError, match=f"pairs file {path}, {message}"):
        read_user_pairs([str(path)])


@pytest.mark.parametrize(("columns", "message"), [
    ({"positive": ["p", "p"]}, "column 'query' is missing"),
    ({"query": [1, 2], "positive": ["p", "p"]}, "column 'query' must be string, got int64"),
    ({"query": ["q", ""], "positive": ["p", "p"]}, "row 2: field 'query' is missing or an empty string"),
    ({"query": ["q", "q"], "positive": ["p", None]}, "row 2: field 'positive' is missing or an empty string"),
    ({"query": ["q", "q"], "positive": ["p", "p"], "negatives": [["n"], ["n", None]]},
     "row 2: field 'negatives' holds a null or empty string"),
    ({"query": ["q", "q"], "positive": ["p", "p"], "negatives": ["n", "n"]}, "column 'negatives' must be list<item"),
])
def test_bad_parquet_names_file_row_and_field(tmp_path, columns, message):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(Bg2VecError, match=f"pairs file {path}.*{message}"):
        read_user_pairs([str(path)])


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(Bg2VecError, match=r"pairs file .*nope.jsonl does not exist"):
        read_user_pairs([str(tmp_path / "nope.jsonl")])
    (tmp_path / "pairs.csv").write_text("query,positive\n")
    with pytest.raises(Bg2VecError, match=r"pairs.csv: unknown extension; give JSON Lines \(.jsonl\) or Parquet"):
        read_user_pairs([str(tmp_path / "pairs.csv")])


def test_config_is_checked():
    with pytest.raises(ConfigError, match="data=DIR .* files="):
        PairsConfig(output="o")
    with pytest.raises(ConfigError, match=r"kinds: unknown \['titles'\]"):
        PairsConfig(output="o", data="d", kinds=["titles"])
    with pytest.raises(ConfigError, match="crop_words"):
        PairsConfig(output="o", data="d", crop_words=[30, 10])
