"""Held-out text for validation speech (training/synth/heldout_text.py): Debian package descriptions
that the training corpus does not hold."""

import random
from pathlib import Path

import pytest

from training.synth.heldout_text import DICTIONARY, DPKG_STATUS, description_paragraphs, heldout_corpus
from training.synth.plan import Planner
from training.synth.text_corpus import Corpus

STATUS = """Package: alpha
Status: install ok installed
Description: short summary that is not read
 The alpha tool converts sound files between many formats
 and applies effects while it converts them.
 .
 It reads the same files that the training corpus reads as well.
Homepage: https://example.org/

Package: beta
Status: install ok installed
Description: another summary
 Beta keeps a small list of the packages that every system needs.
 The libxcb library reads XShmImage files.
"""
needs_dictionary = pytest.mark.skipif(not DICTIONARY.is_file(), reason="no word list (training/setup_tts.sh)")


def test_descriptions_split_into_paragraphs_per_package(tmp_path):
    status = tmp_path / "status"
    status.write_text(STATUS)
    assert list(description_paragraphs(status)) == [
        ("description:alpha", "The alpha tool converts sound files between many formats and applies effects "
                              "while it converts them."),
        ("description:alpha", "It reads the same files that the training corpus reads as well."),
        ("description:beta", "Beta keeps a small list of the packages that every system needs. "
                             "The libxcb library reads XShmImage files."),
    ]


@needs_dictionary
def test_sentences_the_training_corpus_holds_and_jargon_are_dropped(tmp_path):
    status = tmp_path / "status"
    status.write_text(STATUS)
    training = Corpus(("it reads the same files that the training corpus reads, as well!",), ("man:x",))
    heldout = heldout_corpus(training, status)
    assert heldout.sentences == (
        "The alpha tool converts sound files between many formats and applies effects while it converts "
        "them.",
        "Beta keeps a small list of the packages that every system needs.",
    )
    assert heldout.sources == ("description:alpha", "description:beta")
    planned = {Planner(heldout, {}, seed).pick_text(random.Random(seed))[0] for seed in range(20)}
    assert planned <= set(heldout.sentences)  # neighbours of another package are never joined


@needs_dictionary
@pytest.mark.skipif(not DPKG_STATUS.is_file(), reason="not a Debian system")
def test_this_machines_descriptions_give_enough_heldout_text():
    heldout = heldout_corpus(Corpus((), ()), DPKG_STATUS)
    assert len(heldout.sentences) >= 200
    assert all(source.startswith("description:") for source in heldout.sources)


@needs_dictionary
def test_no_descriptions_is_an_error(tmp_path):
    status = tmp_path / "status"
    status.write_text("Package: gamma\nStatus: install ok installed\n")
    with pytest.raises(ValueError, match="no held-out sentences"):
        heldout_corpus(Corpus((), ()), Path(status))
