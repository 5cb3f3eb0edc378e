"""End-to-end timing on a synthetic data set in the exact ml-100k format.

The real ml-100k cannot be downloaded here (and is never downloaded at run time),
so this writes a stand-in of the same shape (943 users, 1,682 movies, 100,000
ratings over seven months, ``u.data``/``u.item``/``u.user`` in their formats,
latin-1 titles) from a latent-factor model, then times::

    ranker import movielens DIR        (import_movielens)
    ranker evaluate --time-split 0.8,0.1,0.1 --base-model ensemble

    python bench/ml100k_synthetic.py [--ratings 100000] [--base-model ensemble] [--features guide|history]
                                     [--json] [--keep DIR]

The figures describe the synthetic data, not MovieLens; run the same two commands on
the real ml-100k (from https://grouplens.org/datasets/movielens/100k/) for those.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: ml-100k's rating period.
START, END = datetime(1997, 9, 20), datetime(1998, 4, 23)
#: Share of 1..5 stars in ml-100k.
STAR_SHARES = (0.061, 0.114, 0.271, 0.342, 0.212)
MAX_PER_USER = 737
WORDS = ("Café", "Amélie", "Noël", "Señor", "Night", "Return", "Star", "River", "Blue", "Garden",
         "City", "Ghost", "Love", "War", "Road", "Dream", "King", "Island", "Summer", "Fire")


def write_ml100k(folder: str | Path, n_users: int = 943, n_items: int = 1682, n_ratings: int = 100_000,
                 seed: int = 0, dim: int = 8) -> Path:
    """Write ``u.data``, ``u.item`` and ``u.user`` in the ml-100k formats; returns the folder.

    A user's chance to rate a movie grows with affinity (latent dot product, genre driven)
    and popularity; the rating is affinity plus noise, binned to 1-5 stars with ml-100k's
    histogram (mean 3.53). Users rate in sessions of seconds-apart ratings, as MovieLens users do;
    7% of the movies come out during the rating period and are rated only after release.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    span = (END - START).total_seconds()

    genre_vec = rng.normal(size=(len(GENRES), dim))
    genre_p = 1.0 / np.arange(1, len(GENRES)) ** 0.7
    genre_p /= genre_p.sum()
    item_genres = [1 + rng.choice(len(GENRES) - 1, size=rng.integers(1, 4), replace=False, p=genre_p)
                   for _ in range(n_items)]
    item_vec = np.stack([genre_vec[g].mean(0) for g in item_genres]) + 0.6 * rng.normal(size=(n_items, dim))
    log_pop = rng.normal(scale=1.2, size=n_items)
    new = rng.random(n_items) < 0.07
    released = np.where(
        new, [START + timedelta(seconds=float(s)) for s in rng.uniform(0, 0.9 * span, n_items)],
        [datetime(int(y), 1, 1) + timedelta(days=int(d)) for y, d in
         zip(np.clip(1998 - rng.exponential(6.0, n_items), 1922, 1997), rng.integers(0, 365, n_items))])

    user_genres = [1 + rng.choice(len(GENRES) - 1, size=2, replace=False, p=genre_p) for _ in range(n_users)]
    user_vec = np.stack([genre_vec[g].mean(0) for g in user_genres]) + 0.7 * rng.normal(size=(n_users, dim))
    activity = rng.lognormal(0.0, 1.0, n_users)
    counts = 20 + rng.multinomial(n_ratings - 20 * n_users, activity / activity.sum())
    while counts.max() > MAX_PER_USER:  # ml-100k's heaviest user rated 737 movies
        excess = int(np.maximum(counts - MAX_PER_USER, 0).sum())
        counts = np.minimum(counts, MAX_PER_USER)
        room = (counts < MAX_PER_USER).astype(float)
        counts += rng.multinomial(excess, room / room.sum())

    rows = []
    for u in range(n_users):
        affinity = item_vec @ user_vec[u] / np.sqrt(dim)
        first = START + timedelta(seconds=float(rng.uniform(0, 0.95 * span)))
        n_sessions = 1 + rng.poisson(1.5)
        session_starts = sorted(first + timedelta(seconds=float(s))
                                for s in rng.uniform(0, (END - first).total_seconds(), n_sessions - 1))
        session_starts = [first, *session_starts]
        share = rng.multinomial(counts[u] - n_sessions, np.ones(n_sessions) / n_sessions) + 1
        rated = np.zeros(n_items, dtype=bool)
        for t0, n in zip(session_starts, share):
            open_ = (released <= t0) & ~rated
            pool = np.flatnonzero(open_)
            n = min(n, len(pool))
            logits = 1.5 * affinity[pool] + log_pop[pool]
            p = np.exp(logits - logits.max())
            chosen = rng.choice(pool, size=n, replace=False, p=p / p.sum())
            rated[chosen] = True
            gaps = np.cumsum(rng.integers(5, 90, size=n))
            taste = 1.1 * affinity[chosen] + 0.3 * log_pop[chosen] + rng.normal(scale=0.8, size=n)
            base = int((t0 - datetime(1970, 1, 1)).total_seconds())
            rows += [(u + 1, int(i) + 1, float(r), base + int(g)) for i, r, g in zip(chosen, taste, gaps)]

    # Stars by quantile of taste, so the rating histogram matches ml-100k's.
    taste = np.array([r[2] for r in rows])
    stars = 1 + np.searchsorted(np.quantile(taste, np.cumsum(STAR_SHARES)[:-1]), taste)
    rows = [(u, i, int(s), t) for (u, i, _, t), s in zip(rows, stars)]

    order = rng.permutation(len(rows))  # u.data is not in time order
    with open(folder / "u.data", "w", encoding="ascii") as fh:
        fh.writelines(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in (rows[j] for j in order))
    with open(folder / "u.item", "w", encoding="latin-1") as fh:
        for i in range(n_items):
            d = released[i]
            year = d.year
            title = f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7 + 3) % len(WORDS)]} {i + 1} ({year})"
            flags = ["0"] * len(GENRES)
            for g in item_genres[i]:
                flags[g] = "1"
            date = f"{d.day:02d}-{MONTHS[d.month - 1]}-{year}"
            url = f"http://us.imdb.com/M/title-exact?movie{i + 1}"
            fh.write("|".join([str(i + 1), title, date, "", url, *flags]) + "\n")
    with open(folder / "u.user", "w", encoding="ascii") as fh:
        for u in range(n_users):
            age = int(np.clip(rng.normal(33, 11), 7, 73))
            fh.write(f"{u + 1}|{age}|{'MF'[int(rng.random() < 0.29)]}|"
                     f"{OCCUPATIONS[rng.integers(len(OCCUPATIONS))]}|{rng.integers(10000, 99999)}\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--base-model", default="ensemble")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="write the files and database here")
    parser.add_argument("--features", default="guide", help="the feature set: guide or history")
    args = parser.parse_args(argv)

    import torch

    from ranker.data.db import make_engine
    from ranker.data.importing import import_movielens
    from ranker.evaluation.evaluate import evaluate_end_to_end
    from ranker.rank.features import use_feature_set

    torch.set_num_threads(2)
    use_feature_set(args.features)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        folder = write_ml100k(root / "ml-100k", n_ratings=args.ratings, seed=args.seed)
        t1 = time.perf_counter()
        db = root / "ml100k.db"
        db.unlink(missing_ok=True)
        engine = make_engine(f"sqlite:///{db}")
        summary = import_movielens(engine, folder)
        t2 = time.perf_counter()
        result = evaluate_end_to_end(engine, base_model=args.base_model, seed=args.seed)
        t3 = time.perf_counter()
        engine.dispose()
    timings = {"generate_s": round(t1 - t0, 2), "import_s": round(t2 - t1, 2),
               "evaluate_s": round(t3 - t2, 2), "import_plus_evaluate_s": round(t3 - t1, 2)}
    if args.json:
        print(json.dumps({"import": summary.as_dict(), "evaluation": result.to_dict(), "timings": timings}))
        return 0
    print(f"synthetic ml-100k: {summary.users} users, {summary.items} items, {summary.ratings:,} ratings "
          f"-> {summary.interactions:,} interactions ({summary.positives:,} likes); {args.features} features")
    print(result.table())
    print()
    for name, seconds in timings.items():
        print(f"{name:<24} {seconds:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
