"""The real IFEval (isheep_lite.evals.ifeval): Google's prompts, scored by lm-evaluation-harness's checker, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from isheep_lite.evals import ifeval

GROUPS = sorted({p.group for p in ifeval.prompts()})


@pytest.fixture(scope="module", autouse=True)
def offline_nltk(tmp_path_factory: pytest.TempPathFactory):
    """Punkt goes to a throwaway cache, and any attempt to download NLTK data fails the test."""
    import nltk

    def no_download(*args, **kwargs):
        raise AssertionError(f"nltk.download{args} called")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ISHEEP_CACHE", str(tmp_path_factory.mktemp("isheep-cache")))
        mp.delenv("NLTK_DATA", raising=False)
        mp.setattr(nltk, "download", no_download)
        yield


def by_key(key: int) -> ifeval.Prompt:
    return next(p for p in ifeval.prompts() if p.key == key)


# --- the shipped data ---------------------------------------------------------------------------------


def test_shipped_prompts():
    ps = ifeval.prompts()
    assert len(ps) == 541
    assert len({p.key for p in ps}) == 541
    assert all(len(p.instruction_id_list) == len(p.kwargs) >= 1 for p in ps)
    assert len(ifeval.KINDS) == 25
    assert set(ifeval.KINDS) == {k for p in ps for k in p.instruction_id_list}
    assert {"punctuation:no_comma", "language:response_language", "combination:repeat_prompt"} <= set(ifeval.KINDS)


# --- every kind: one answer that follows the instruction, one that does not -----------------------------

_GLACIARIUM_LONG = (
    "The first artificial ice rink has a surprisingly long story behind it. In the middle of the nineteenth century "
    "skaters in Britain depended entirely on the weather, and a mild winter meant that lakes and ponds never froze hard "
    "enough to carry anyone. Inventors tried many substitutes, including floors covered with a mixture of salts and pig "
    "fat, but none of them felt like real ice. The breakthrough came from a scientist who had been studying refrigeration "
    "for the meat trade. He realised that the same pipes that kept carcasses cold on long voyages could be laid under a "
    "shallow pool of water and used to freeze it solid. (1) Name: John Gamgee built the rink and called it the Glaciarium. "
    "(2) Location: it opened in Chelsea, London, just off the King's Road, in a modest tent-like building. (3) Year: the "
    "doors opened in January 1876. The rink was small by modern standards, and the ether and glycerine in its pipes made "
    "it expensive to run, but it proved that skating no longer had to wait for a hard frost, and rinks across Europe soon "
    "copied the idea."
)

_HIGHLIGHTS = (
    "Origins of coffee in Ethiopia",
    "Arrival of coffee in Yemen",
    "Sufi monasteries and night prayers",
    "Terraced farms in the highlands",
    "The port of Mocha",
    "Ottoman control of the trade",
    "Coffee houses in Cairo and Istanbul",
    "European merchants arrive",
    "The Dutch smuggle seedlings",
    "Loss of the monopoly",
    "Qat replaces coffee on many farms",
    "Traditional drying and processing",
    "Specialty coffee revival",
    "Challenges of war and water",
    "The future of Yemeni coffee",
)

_ALIEN_PARAGRAPHS = (
    "BREAKING NEWS: Aliens have landed in a cornfield outside Omaha and demanded to speak with whoever is in charge of snacks.",
    "President Smith met the visitors on the White House lawn and offered them a plate of cookies as a sign of peace.",
    "The aliens ate the plate, politely declined the cookies, and asked whether Earth has any more plates.",
    "Scientists confirmed that the spaceship runs entirely on reality television and is now low on fuel.",
    "Local residents report that the invaders are very polite but keep rearranging everyone's furniture.",
    "At press time the aliens had applied for library cards and joined a bowling league.",
)

# kind -> (key of a shipped prompt with that one instruction, an answer that follows it, an answer that does not)
CASES: dict[str, tuple[int, str, str]] = {
    "change_case:capital_word_frequency": (
        1592,
        "Two researchers from Stanford and Berkeley found that the US could run on RENEWABLE energy by 2050. "
        "WIND, water and SOLAR power would supply every sector, create jobs and cut pollution.",
        "Two researchers from Stanford and Berkeley found that the country could run on renewable energy by 2050. "
        "Wind, water and solar power would supply every sector, create jobs and cut pollution.",
    ),
    "change_case:english_capital": (
        1566,
        "VERSE ONE: I STILL THINK ABOUT THE SUMMER WE LOST AND THE LETTERS I NEVER SENT.\n"
        "EXPLANATION: THIS SONG IS ABOUT REGRET AND LOOKING BACK AT CHOICES WE CANNOT UNDO.",
        "Verse one: I still think about the summer we lost and the letters I never sent.\n"
        "Explanation: this song is about regret and looking back at choices we cannot undo.",
    ),
    "change_case:english_lowercase": (
        1019,
        "what game are the two young boys with toy guns and horns playing in the park this afternoon?",
        "What game are the two young boys with toy guns and horns playing in the park this afternoon?",
    ),
    "combination:repeat_prompt": (
        1480,
        "Write a blog post about the most interesting things you have seen or ridden on public transportation.\n\n"
        "The strangest ride I ever took was a night ferry with a brass band playing on the deck.",
        "The strangest ride I ever took was a night ferry with a brass band playing on the deck.",
    ),
    "combination:two_responses": (
        1098,
        "Many people call God the Almighty.\n******\nMany people call God the Creator.",
        "Many people call God the Almighty.",
    ),
    "detectable_content:number_placeholders": (
        1005,
        "[Full Name]\n[Street Address], [City], [State] [Zip Code]\n[Phone Number] | [Email Address]\n\n"
        "Objective: a motivated graduate of [High School Name] seeking a first job as a [Job Title].\n"
        "Education: [High School Name], class of [Graduation Year]\nSkills: [Skill One], [Skill Two]",
        "[Full Name]\n[Email Address]\n\nObjective: a motivated high school graduate seeking a first job in retail.",
    ),
    "detectable_content:postscript": (
        1246,
        "Meet the lamp that lights your way,\nIt glows by night and rests by day.\n\n"
        "P.P.S. Replace these lines with your own product's best features.",
        "Meet the lamp that lights your way,\nIt glows by night and rests by day.",
    ),
    "detectable_format:constrained_response": (
        227,
        "My answer is no.",
        "A golden retriever is usually heavier than a poodle.",
    ),
    "detectable_format:json_format": (
        1075,
        '```json\n{\n  "product": "CloudSoft diaper",\n  "headline": "Comfort that lasts all night",\n'
        '  "features": ["soft lining", "breathable layers"]\n}\n```',
        "Introducing CloudSoft: the diaper that keeps your baby comfortable all night long.",
    ),
    "detectable_format:multiple_sections": (
        1131,
        "Section 1: Contact\nPhil Larkin, professional clown.\n\nSection 2: Experience\nTen years of birthday parties.\n\n"
        "Section 3: Skills\nJuggling and balloon animals.\n\nSection 4: References\nAvailable on request.",
        "Section 1: Contact\nPhil Larkin, professional clown.\n\nSection 2: Experience\nTen years of birthday parties.",
    ),
    "detectable_format:number_bullet_lists": (
        102,
        "* Ava: I feel overdressed in this ball gown.\n* Ben: I feel underdressed in these sweats.\n"
        "* Ava: Then together we are dressed just right.",
        "* Ava: I feel overdressed in this ball gown.\n* Ben: I feel underdressed in these sweats.",
    ),
    "detectable_format:number_highlighted_sections": (
        1307,
        "Outline: the history of Yemeni coffee\n" + "\n".join(f"{i}. *{h}*" for i, h in enumerate(_HIGHLIGHTS, 1)),
        "Outline: the history of Yemeni coffee\n1. *Origins of coffee in Ethiopia*\n2. *The port of Mocha*\n3. Loss of the monopoly",
    ),
    "detectable_format:title": (
        1322,
        "<<Kotlin vs Java>>\nKotlin is concise and null-safe; Java has the larger ecosystem.",
        "Kotlin vs Java\nKotlin is concise and null-safe; Java has the larger ecosystem.",
    ),
    "keywords:existence": (
        1531,
        "<h1>Project Atlantis</h1>\n<p>A community constable and local volunteers will map barriers to access in public spaces.</p>",
        "<h1>Project Atlantis</h1>\n<p>Local volunteers will map barriers to access in public spaces.</p>",
    ),
    "keywords:forbidden_words": (
        1147,
        "My fellow Americans, our engineers have corrected the problem we observed with single sign-on. "
        "We are working closely with our partners, and we will see this work through. I am grateful to each of you.",
        "My fellow Americans, our engineers have corrected the issue we observed with single sign-on. "
        "We are working closely with our partners, and we will see this work through.",
    ),
    "keywords:frequency": (
        1393,
        "Pros: synonyms keep writing varied, and synonyms suit different audiences.\nCons: synonyms can confuse readers who expect one term.",
        "Pros: varied writing.\nCons: two names for one thing can confuse readers, so prefer one term over synonyms.",
    ),
    "keywords:letter_frequency": (
        1130,
        "Quiz: which room would you place a chesterfield in? A) living room B) garage C) bedroom",
        "Question: what exactly is a chesterfield? A) a sofa B) a coat C) a city",
    ),
    "language:response_language": (
        3682,
        "Google, Facebook, Microsoft, Apple und Amazon geben jedes Jahr viele Millionen Dollar für Lobbyarbeit in Washington aus. "
        "Facebook und Amazon gehören dabei zu den Unternehmen mit den höchsten Ausgaben, während Apple deutlich weniger ausgibt. "
        "Die Konzerne wollen vor allem Gesetze zum Datenschutz, zum Wettbewerb und zur Besteuerung beeinflussen.",
        "Google, Facebook, Microsoft, Apple and Amazon spend many millions of dollars on lobbying in Washington every year. "
        "Facebook and Amazon are among the biggest spenders, while Apple spends considerably less. "
        "The companies mainly want to influence laws on privacy, competition and taxation.",
    ),
    "length_constraints:nth_paragraph_first_word": (
        181,
        "\n\n".join(_ALIEN_PARAGRAPHS),
        "\n\n".join((_ALIEN_PARAGRAPHS[0], "Meanwhile, " + _ALIEN_PARAGRAPHS[1], *_ALIEN_PARAGRAPHS[2:])),
    ),
    "length_constraints:number_paragraphs": (
        1082,
        "Max woke up to a health bar floating above his head.\n***\nBy noon he had learned to save his progress before crossing the road.",
        "Max woke up to a health bar floating above his head.\n***\nHe found a sword in the fridge.\n***\n"
        "His cat offered him a side quest.\n***\nHe lost a life on the stairs.\n***\n"
        "By noon he had learned to save his progress before crossing the road.",
    ),
    "length_constraints:number_sentences": (
        1268,
        "Dear diary, today I took a short walk to ease my stress. I came up with this example by picturing a calm evening.",
        "Dear diary, today was hard. My inbox overflowed. I took a short walk. Then I wrote down three worries. "
        "Then I crossed two of them out. I slept well. I came up with this example by picturing my own week.",
    ),
    "length_constraints:number_words": (
        2243,
        "(1) Name: John Gamgee built the Glaciarium, the first mechanically frozen ice rink. (2) Location: Chelsea, London. (3) Year: 1876.",
        _GLACIARIUM_LONG,
    ),
    "punctuation:no_comma": (
        1001,
        "Day one: we sail to Tokyo and gaze upon the cherry blossoms.\nDay two: thou shalt ride the swift train to Kyoto.",
        "Day one: we sail to Tokyo and gaze upon the cherry blossoms.\nDay two: thou shalt ride the swift train, fair and fast, to Kyoto.\n"
        "Day three: we rest in Nara.",
    ),
    "startend:end_checker": (
        1128,
        "The sentiment is negative.\nIs there anything else I can help with?",
        "The sentiment is negative. Let me know if you need more help.",
    ),
    "startend:quotation": (
        122,
        '"The internet began as a research network in the 1960s and now connects billions of people."',
        "The internet began as a research network in the 1960s and now connects billions of people.",
    ),
}


def test_every_kind_has_a_case():
    assert sorted(CASES) == list(ifeval.KINDS)


@pytest.mark.parametrize("kind", ifeval.KINDS)
def test_official_checker_verdicts(kind: str):
    key, follows, breaks = CASES[kind]
    p = by_key(key)
    assert p.instruction_id_list == [kind]
    good = ifeval.score(p, follows)
    bad = ifeval.score(p, breaks)
    assert good.strict == [True] and good.loose == [True]
    assert bad.strict == [False] and bad.loose == [False]  # each failing answer fails outright, not only strictly
    assert good.prompt_strict and not bad.prompt_strict


def test_answer_lengths_are_what_the_cases_claim():
    from lm_eval.tasks.ifeval import instructions_util

    _, follows, breaks = CASES["length_constraints:number_words"]
    assert instructions_util.count_words(follows) < 150 < instructions_util.count_words(breaks)
    _, follows, breaks = CASES["length_constraints:number_sentences"]
    assert instructions_util.count_sentences(follows) == 2
    assert instructions_util.count_sentences(breaks) == 7


def test_language_verdict_is_deterministic():
    import langdetect

    key, follows, _ = CASES["language:response_language"]
    p = by_key(key)
    # a short snippet is where langdetect's random sampling would flip verdicts between calls if it were unseeded
    for text in (follows, "Apple gibt weniger aus.", "Die Konzerne und Gesetze."):
        assert len({tuple(ifeval.score(p, text).strict) for _ in range(10)}) == 1
    assert langdetect.DetectorFactory.seed == 0


# --- loose vs strict ---------------------------------------------------------------------------------------


def test_loose_forgives_a_preamble_line():
    _, follows, _ = CASES["startend:quotation"]
    s = ifeval.score(by_key(122), "Sure! Here it is:\n" + follows)
    assert s.strict == [False] and s.loose == [True]


def test_loose_forgives_markdown_asterisks():
    p = by_key(1480)
    s = ifeval.score(p, f"**{p.kwargs[0]['prompt_to_repeat']}**\n\nThe strangest ride I ever took was a night ferry.")
    assert s.strict == [False] and s.loose == [True]


def test_multi_instruction_prompt():
    p = by_key(1000)  # no commas, at least 3 highlighted sections, at least 300 words
    assert p.instruction_id_list == [
        "punctuation:no_comma",
        "detectable_format:number_highlighted_sections",
        "length_constraints:number_words",
    ]
    s = ifeval.score(p, "*Early life* Raymond was born in 1140.\n*Regency* He ruled for a young king.\n*Hattin* He escaped the battle.")
    assert s.strict == s.loose == [True, True, False]  # verdicts in the prompt's order; too short
    assert not s.prompt_strict and not s.prompt_loose
    assert ifeval.score(p, "  ").strict == [False, False, False]  # a blank answer follows nothing


# --- summarise -------------------------------------------------------------------------------------------


def test_summarise_arithmetic():
    scored = [
        ifeval.Scored(1, ["a:x", "b:y"], strict=[True, True], loose=[True, True]),
        ifeval.Scored(2, ["a:x", "b:y", "c:z"], strict=[True, False, False], loose=[True, True, False]),
        ifeval.Scored(3, ["c:z"], strict=[False], loose=[True]),
    ]
    r = ifeval.summarise(scored)
    assert r["n_prompts"] == 3 and r["n_instructions"] == 6
    assert r["prompt_strict"] == pytest.approx(1 / 3)
    assert r["prompt_loose"] == pytest.approx(2 / 3)
    assert r["instruction_strict"] == pytest.approx(3 / 6)
    assert r["instruction_loose"] == pytest.approx(5 / 6)
    assert r["keys"] == [1, 2, 3]
    assert r["per_prompt_strict"] == [1, 0, 0]
    assert r["per_prompt_loose"] == [1, 0, 1]
    assert r["per_kind_loose"] == {"a:x": 1.0, "b:y": 1.0, "c:z": 0.5}
    assert r["per_kind_count"] == {"a:x": 2, "b:y": 2, "c:z": 2}
    with pytest.raises(ValueError):
        ifeval.summarise([])


def test_summarise_of_real_scores():
    ps = [by_key(CASES[k][0]) for k in ifeval.KINDS]
    scored = [ifeval.score(p, CASES[k][1]) for p, k in zip(ps, ifeval.KINDS)] + [ifeval.score(ps[0], CASES[ifeval.KINDS[0]][2])]
    r = ifeval.summarise(scored)
    assert r["per_prompt_strict"] == [1] * 25 + [0]
    assert r["prompt_strict"] == pytest.approx(25 / 26)
    assert r["per_kind_loose"][ifeval.KINDS[0]] == 0.5
    assert json.loads(json.dumps(r)) == r


# --- stratified subsets ------------------------------------------------------------------------------------


def test_subset_all_and_bounds():
    assert ifeval.prompts() == ifeval.prompts(None, seed=3)
    assert ifeval.prompts(541) == ifeval.prompts()
    assert ifeval.prompts(0) == []
    for bad in (-1, 542):
        with pytest.raises(ValueError):
            ifeval.prompts(bad)


@pytest.mark.parametrize("n", [len(GROUPS), 10, 25, 60, 200])
def test_subset_stratified(n: int):
    a = ifeval.prompts(n, seed=7)
    assert a == ifeval.prompts(n, seed=7)
    assert len(a) == n
    assert len({p.key for p in a}) == n
    assert {p.group for p in a} == set(GROUPS)
    order = {p.key: i for i, p in enumerate(ifeval.prompts())}
    assert [order[p.key] for p in a] == sorted(order[p.key] for p in a)  # file order
    assert ifeval.prompts(n, seed=8) != a


def test_subset_proportional():
    sizes = Counter(p.group for p in ifeval.prompts())
    got = Counter(p.group for p in ifeval.prompts(100, seed=1))
    for g in GROUPS:
        assert abs(got[g] - 100 * sizes[g] / 541) < 1


def test_small_subset_below_group_count():
    a = ifeval.prompts(3, seed=0)
    assert len(a) == 3 and len({p.key for p in a}) == 3


# --- Punkt, offline -----------------------------------------------------------------------------------------


def test_punkt_model_written_once_and_equal_to_the_packaged_one(monkeypatch: pytest.MonkeyPatch):
    import nltk
    from nltk.tokenize.punkt import load_punkt_params
    from punkt.data import english

    root = ifeval._nltk_data()
    assert root == Path(os.environ["ISHEEP_CACHE"]) / "nltk_data"
    lang = root / "tokenizers" / "punkt_tab" / "english"
    # read it the way lm-eval's sentence counting does: found on nltk.data.path (NLTK refuses other paths)
    monkeypatch.setattr(nltk.data, "path", [str(root), *nltk.data.path])
    params = load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))
    assert params.abbrev_types == set(english.ABBREV_TYPES)
    assert params.collocations == set(english.COLLOCATIONS)
    assert params.sent_starters == set(english.SENT_STARTERS)
    assert dict(params.ortho_context) == dict(english.ORTHO_CONTEXT)
    stamp = {f.name: f.stat().st_mtime_ns for f in lang.iterdir()}
    assert ifeval._nltk_data() == root
    assert {f.name: f.stat().st_mtime_ns for f in lang.iterdir()} == stamp
    assert not list(root.parent.glob("nltk_data.tmp*"))  # no temporaries left behind


def test_incomplete_punkt_dir_is_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ISHEEP_CACHE", str(tmp_path))
    lang = tmp_path / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True)
    (lang / "abbrev_types.txt").write_text("junk\n")
    root = ifeval._nltk_data()
    assert sorted(f.name for f in lang.iterdir()) == ["abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"]
    assert "junk" not in (lang / "abbrev_types.txt").read_text()
    assert [p.name for p in root.parent.iterdir()] == ["nltk_data"]


_CHILD = """
import json, socket, sys
def refuse(*args, **kwargs):
    raise AssertionError(f"network access: {args}")
socket.socket.connect = refuse
socket.create_connection = refuse
import isheep_lite.evals.ifeval as ifeval
heavy = sorted(m for m in ("nltk", "lm_eval", "langdetect", "punkt") if m in sys.modules)
import nltk
def no_download(*args, **kwargs):
    raise AssertionError(f"nltk.download{args} called")
nltk.download = no_download
p = next(p for p in ifeval.prompts() if p.key == 1268)  # less than 6 sentences
few = ifeval.score(p, "I breathe. I plan my day. I rest.")
many = ifeval.score(p, "One. Two. Three. Four. Five. Six. Seven.")
print(json.dumps({"heavy": heavy, "few": few.strict, "many": many.strict}))
"""


def test_fresh_process_scores_sentences_offline(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "NLTK_DATA"}
    env["ISHEEP_CACHE"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"heavy": [], "few": [True], "many": [False]}
    assert (tmp_path / "cache" / "nltk_data" / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab").is_file()
    assert "[nltk_data]" not in out.stdout + out.stderr and "Downloaded" not in out.stdout
