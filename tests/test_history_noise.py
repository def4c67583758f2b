import random

from training.history_noise import corrupt_transcript


def test_corruption_changes_some_words_keeps_most_and_keeps_their_order():
    rng = random.Random(0)
    text = " ".join(f"w{i}" for i in range(100))
    pool = ["alpha", "beta", "gamma"]
    shares = []
    for _ in range(200):
        words = corrupt_transcript(text, pool, rng).split()
        survivors = [int(word[1:]) for word in dict.fromkeys(w for w in words if w.startswith("w"))]
        assert survivors == sorted(survivors)
        shares.append(len(survivors) / 100)
        assert all(word in pool or word.startswith("w") for word in words)
    mean = sum(shares) / len(shares)
    assert 0.6 < mean < 0.95, mean
    assert min(shares) < 0.5  # some turns are cut short


def test_empty_text_stays_empty():
    assert corrupt_transcript("", ["x"], random.Random(1)) == ""
