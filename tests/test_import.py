"""Importing MovieLens, RecBole atomic files and CSV exports (R-IMPORT).

Every test writes its own tiny files in the exact source format, imports them into a
fresh SQLite database and reads the rows back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select, text

from ranker import keys
from ranker.cli import main
from ranker.data.db import WorldExistsError, ensure_schema, get_setting, make_engine, session_scope, table_counts
from ranker.data.importing import (
    ImportDataError,
    age_band,
    decade,
    expand_events,
    genre_attributes,
    import_csv,
    import_movielens,
    import_recbole,
    read_movielens,
    write_import,
)
from ranker.data.schema import AuditLog, Interaction, Item, User

ML100K_GENRES = 19
T0 = 881_250_949  # 1997-12-04 15:55:49 UTC, a real u.data timestamp


def ts(offset_s: int) -> int:
    return T0 + offset_s


def utc(seconds: int) -> datetime:
    return datetime(1970, 1, 1) + pd.Timedelta(seconds=seconds)


# --- Writers for the exact formats -----------------------------------------------------


def write_ml100k(folder: Path, ratings: list[tuple], items: list[tuple], users: list[tuple] | None = None,
                 sep: str = "\t") -> Path:
    """``u.data`` (tab), ``u.item`` (latin-1, 24 '|' fields), optional ``u.user``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(sep.join(map(str, r)) + "\n" for r in ratings), encoding="ascii")
    lines = []
    for item_id, title, date, genre_flags in items:
        flags = ["0"] * ML100K_GENRES
        for g in genre_flags:
            flags[g] = "1"
        lines.append("|".join([str(item_id), title, date, "", f"http://us.imdb.com/{item_id}", *flags]))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    if users is not None:
        (folder / "u.user").write_text("".join("|".join(map(str, u)) + "\n" for u in users), encoding="ascii")
    return folder


# genre indices in u.item: 1 Action, 5 Comedy, 8 Drama, 15 Sci-Fi
ITEMS = [
    (1, "Café Noir (1995)", "01-Jan-1995", [1, 5]),  # Action, Comedy
    (2, "Solaris (1972)", "20-Mar-1972", [8]),  # Drama only
    (3, "unknown", "", [0]),  # no release date, genre unknown
    (4, "Gattaca (1997)", "24-Oct-1997", [8, 15]),
]
RATINGS = [  # user, item, rating, timestamp (not in time order, like u.data)
    (1, 1, 5, ts(300)),
    (1, 2, 3, ts(100)),
    (2, 1, 4, ts(200)),
    (2, 3, 2, ts(400)),
    (3, 4, 1, ts(500)),
    (3, 2, 4, ts(600)),
]
USERS = [(1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "94043"), (3, 17, "M", "student", "32067")]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'import.db'}")
    ensure_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    return write_ml100k(tmp_path / "ml-100k", RATINGS, ITEMS, USERS)


def interactions(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(select(Interaction.id, Interaction.user_id, Interaction.item_id, Interaction.kind,
                                   Interaction.created_at, Interaction.rating).order_by(Interaction.id)).all()
    return pd.DataFrame(rows, columns=["id", "user_id", "item_id", "kind", "created_at", "rating"])


def items_by_id(engine: Engine) -> dict[int, Item]:
    with session_scope(engine) as s:
        return {i.id: i for i in s.scalars(select(Item))}


def users_by_id(engine: Engine) -> dict[int, User]:
    with session_scope(engine) as s:
        return {u.id: u for u in s.scalars(select(User))}


# --- Pure mapping ------------------------------------------------------------------------


def test_expand_events_adds_a_like_at_the_same_time_only_for_ratings_of_four_and_up() -> None:
    t = np.array(["2024-01-01T00:00:03", "2024-01-01T00:00:01", "2024-01-01T00:00:02", "2024-01-01T00:00:04",
                  "2024-01-01T00:00:05"], dtype="datetime64[us]")
    events = pd.DataFrame({"user": ["a"] * 5, "item": ["x", "y", "z", "w", "v"], "time": t,
                           "rating": [5.0, 3.0, 2.0, np.nan, np.nan], "kind": ["", "", "", "", "click"]})
    out = expand_events(events)
    assert out[["item", "kind"]].values.tolist() == [
        ["y", "view"], ["z", "view"], ["x", "view"], ["x", "like"], ["w", "view"], ["w", "like"], ["v", "click"],
    ]
    like = out[out["kind"] == "like"].iloc[0]
    assert like["time"] == out[(out["item"] == "x") & (out["kind"] == "view")]["time"].iloc[0]
    assert like["rating"] == 5.0


def test_expand_events_threshold_is_configurable() -> None:
    events = pd.DataFrame({"user": ["a", "a"], "item": ["x", "y"],
                           "time": np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[us]"),
                           "rating": [7.0, 8.0], "kind": ["", ""]})
    assert expand_events(events, positive_min=8.0)["kind"].tolist() == ["view", "view", "like"]


def test_genres_map_to_category_and_field_and_year_to_decade() -> None:
    assert genre_attributes(["Action", "Comedy", "War"]) == ("Action", "Comedy")
    assert genre_attributes(["Drama"]) == ("Drama", "none")
    assert genre_attributes(["unknown"]) == ("unknown", "none")
    assert genre_attributes([]) == ("unknown", "none")
    assert (decade(1995), decade(2000), decade(float("nan"))) == ("1990s", "2000s", "unknown")
    assert [age_band(a) for a in (7, 18, 24, 25, 49, 50, 56, 73)] == [
        "under-18", "18-24", "18-24", "25-34", "45-49", "50-55", "56+", "56+"]


# --- MovieLens ----------------------------------------------------------------------------


def test_ml100k_every_rating_is_a_view_and_ratings_of_four_and_up_are_also_likes(engine, ml100k) -> None:
    summary = import_movielens(engine, ml100k)

    counts = table_counts(engine)
    assert (counts["users"], counts["items"], counts["interactions"]) == (3, 4, 6 + 3)
    df = interactions(engine)
    views = df[df["kind"] == "view"]
    likes = df[df["kind"] == "like"]
    assert sorted(zip(views["user_id"], views["item_id"], views["rating"])) == sorted(
        (u, i, float(r)) for u, i, r, _ in RATINGS)
    assert sorted(zip(likes["user_id"], likes["item_id"])) == [(1, 1), (2, 1), (3, 2)]
    assert (likes["rating"] >= 4).all()
    assert set(df["kind"]) == {"view", "like"}
    assert (summary.source, summary.views, summary.positives, summary.ratings) == ("ml-100k", 6, 3, 6)
    assert (summary.user_ids, summary.item_ids) == ("source", "source")


def test_ml100k_interactions_are_stored_in_time_order_with_the_view_before_its_like(engine, ml100k) -> None:
    import_movielens(engine, ml100k)

    df = interactions(engine)
    assert df["created_at"].is_monotonic_increasing
    assert df["created_at"].iloc[0] == utc(ts(100)) and df["created_at"].iloc[-1] == utc(ts(600))
    pair = df[(df["user_id"] == 1) & (df["item_id"] == 1)]
    assert pair["kind"].tolist() == ["view", "like"]
    assert pair["created_at"].nunique() == 1


def test_ml100k_items_take_category_field_type_and_created_at_from_genres_and_release(engine, ml100k) -> None:
    import_movielens(engine, ml100k)

    items = items_by_id(engine)
    cafe = items[1]
    assert cafe.name == "Café Noir (1995)"  # latin-1 decoded
    assert (cafe.item_type, cafe.category, cafe.field, cafe.type) == ("item", "Action", "Comedy", "1990s")
    assert cafe.created_at == datetime(1995, 1, 1) == cafe.updated_at
    assert (items[2].category, items[2].field, items[2].type) == ("Drama", "none", "1970s")
    assert items[2].created_at == datetime(1972, 3, 20)
    # No release date: the first interaction; no genre: unknown.
    assert items[3].created_at == utc(ts(400))
    assert (items[3].category, items[3].field, items[3].type) == ("unknown", "none", "unknown")
    assert (items[4].category, items[4].field) == ("Drama", "Sci-Fi")
    assert [items[i].views for i in (1, 2, 3, 4)] == [2, 2, 1, 1]


def test_ml100k_users_keep_their_ids_with_age_band_and_occupation(engine, ml100k) -> None:
    import_movielens(engine, ml100k)

    users = users_by_id(engine)
    assert sorted(users) == [1, 2, 3]
    assert (users[1].name, users[1].role, users[1].category, users[1].field) == ("ml:1", "user", "18-24", "technician")
    assert (users[2].category, users[3].category) == ("50-55", "under-18")
    assert users[1].created_at == utc(ts(100))  # first interaction


def test_ml100k_without_u_user_derives_users_from_ratings(engine, tmp_path) -> None:
    folder = write_ml100k(tmp_path / "ml", RATINGS, ITEMS)
    import_movielens(engine, folder)

    users = users_by_id(engine)
    assert sorted(users) == [1, 2, 3]
    assert users[2].category is None and users[2].field is None and users[2].role == "user"


def test_import_sets_the_clock_to_the_last_interaction_and_writes_popularity_and_audit(engine, ml100k) -> None:
    summary = import_movielens(engine, ml100k)

    with session_scope(engine) as s:
        assert get_setting(s, keys.CLOCK) == utc(ts(600)).isoformat()
        # item 1: 2 views + 2 likes -> 2 + 3*2 + 1 = 9, rounded up to 100 as synth.py does
        assert get_setting(s, keys.POPULARITY_MAX_VIEWS) == 100
        rows = s.scalars(select(AuditLog).where(AuditLog.action == "import")).all()
        assert len(rows) == 1 and rows[0].details["interactions"] == 9
    assert summary.clock == utc(ts(600)).isoformat()


def test_each_import_writes_a_new_world_record_so_saved_base_models_are_refitted(engine, ml100k,
                                                                                 tmp_path) -> None:
    import_movielens(engine, ml100k)
    with session_scope(engine) as s:
        first = get_setting(s, keys.WORLD)
    assert (first["source"], first["mode"], first["end"]) == ("ml-100k", "new", utc(ts(600)).isoformat())

    more = write_ml100k(tmp_path / "more", [(50, 60, 5, ts(900))], [(60, "Later (1998)", "01-Feb-1998", [1])])
    import_movielens(engine, more, append=True)
    with session_scope(engine) as s:
        second = get_setting(s, keys.WORLD)
    assert second["mode"] == "append" and second["appended_to"] == first


def test_ml1m_is_detected_from_ratings_dat_and_reads_double_colon_files(engine, tmp_path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Amélie (2001)::Comedy|Romance\n".encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")

    data = read_movielens(folder)
    assert data.source == "ml-1m"
    summary = write_import(engine, data)

    assert (summary.users, summary.items, summary.interactions, summary.positives) == (2, 2, 5, 2)
    items = items_by_id(engine)
    assert (items[661].name, items[661].category, items[661].field, items[661].type) == (
        "Amélie (2001)", "Comedy", "Romance", "2000s")
    assert items[1193].created_at == datetime(1975, 1, 1)  # January 1st of the title's year
    # Rated on 2000-12-31, before 2001 began: an item never starts after its first interaction.
    assert items[661].created_at == utc(978302109)
    users = users_by_id(engine)
    assert (users[1].category, users[1].field) == ("under-18", "K-12 student")
    assert (users[2].category, users[2].field) == ("56+", "self-employed")


# --- RecBole --------------------------------------------------------------------------------


def write_recbole(folder: Path, name: str = "ml-100k", inter: str | None = None, item: str | None = None,
                  user: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(inter if inter is not None else (
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        f"196\t242\t3\t{ts(10)}\n186\t302\t4.5\t{ts(5)}\n196\t302\t1\t{ts(20)}\n"), encoding="utf-8")
    (folder / f"{name}.item").write_text(item if item is not None else (
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"),
        encoding="utf-8")
    if user is not None:
        (folder / f"{name}.user").write_text(user, encoding="utf-8")
    return folder


RECBOLE_ML100K_ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"


def write_recbole_ml100k(folder: Path, user: str | None = None) -> Path:
    """RecBole's ml-100k atomic files in miniature, with the real ``ml-100k.item``'s defect:
    item 267 (title ``unknown``) has a ``release_year`` of ``unkonwn``, at line 268."""
    items = [RECBOLE_ML100K_ITEM_HEADER]
    items += [f"{i}\tMovie {i}\t{1930 + i % 68}\tDrama" for i in range(1, 267)]
    items += ["267\tunknown\tunkonwn\tunknown", "268\tChasing Amy\t1997\tComedy Drama Romance"]
    inter = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
             f"196\t242\t3\t{ts(10)}\n186\t267\t4\t{ts(5)}\n196\t268\t5\t{ts(20)}\n")
    return write_recbole(folder, inter=inter, item="\n".join(items) + "\n", user=user)


def test_recbole_atomic_files_map_typed_fields_to_items_and_interactions(engine, tmp_path) -> None:
    folder = write_recbole(tmp_path / "rb", user=(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "196\t49\tM\twriter\t55105\n186\t39\tF\texecutive\t00000\n"))
    summary = import_recbole(engine, folder)

    assert (summary.source, summary.users, summary.items, summary.interactions) == ("recbole", 2, 2, 4)
    items = items_by_id(engine)
    assert (items[302].name, items[302].category, items[302].field, items[302].type) == (
        "L.A. Confidential", "Crime", "Film-Noir", "1990s")
    assert items[242].field == "none"
    assert items[302].created_at == datetime(1997, 1, 1)
    df = interactions(engine)
    assert df[df["kind"] == "like"][["user_id", "item_id", "rating"]].values.tolist() == [[186, 302, 4.5]]
    assert df["created_at"].is_monotonic_increasing
    users = users_by_id(engine)
    assert (users[196].category, users[196].field) == ("45-49", "writer")


def test_recbole_string_tokens_get_new_ids_and_keep_the_token_in_the_name(engine, tmp_path) -> None:
    folder = write_recbole(
        tmp_path / "rb", name="shop",
        inter=f"user_id:token\titem_id:token\ttimestamp:float\nalice\tsku-9\t{ts(1)}\nbob\tsku-9\t{ts(2)}\n",
        item="item_id:token\tcategories:token_seq\nsku-9\tShoes Running\n")
    summary = import_recbole(engine, folder / "shop.inter")

    assert (summary.user_ids, summary.item_ids) == ("assigned", "assigned")
    users = users_by_id(engine)
    assert sorted(u.name for u in users.values()) == ["rb:alice", "rb:bob"]
    item = next(iter(items_by_id(engine).values()))
    assert (item.name, item.category, item.field, item.type) == ("rb:sku-9", "Shoes", "Running", "unknown")
    # No rating: each row is an implicit positive (a view and a like).
    assert interactions(engine)["kind"].tolist() == ["view", "like", "view", "like"]


# --- CSV ---------------------------------------------------------------------------------------


def write_csv(folder: Path, inter: str, items: str, users: str | None = None) -> tuple[Path, Path, Path | None]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "interactions.csv", folder / "items.csv", folder / "users.csv"
    paths[0].write_text(inter, encoding="utf-8")
    paths[1].write_text(items, encoding="utf-8")
    if users is not None:
        paths[2].write_text(users, encoding="utf-8")
    return paths[0], paths[1], paths[2] if users is not None else None


CSV_INTER = ("user_id,item_id,timestamp,rating,kind\n"
             "10,100,2024-05-01T12:00:00Z,5,\n"
             "10,101,1714568400,,click\n"
             "11,100,2024-05-01T14:00:00+02:00,2.5,\n"
             "11,101,2024-05-02T09:30:00,,\n")
CSV_ITEMS = ('item_id,name,category,field,type,created_at\n'
             '100,"Acme, Inc.",fintech,b2b-saas,seed,2024-04-01\n'
             '101,Zed,health,,,\n')


def test_csv_export_reads_iso_and_unix_times_ratings_and_kinds(engine, tmp_path) -> None:
    inter, items, _ = write_csv(tmp_path / "csv", CSV_INTER, CSV_ITEMS)
    summary = import_csv(engine, inter, items)

    df = interactions(engine)
    assert [(r.user_id, r.item_id, r.kind, r.created_at) for r in df.itertuples()] == [
        (10, 100, "view", datetime(2024, 5, 1, 12, 0)),
        (10, 100, "like", datetime(2024, 5, 1, 12, 0)),
        (11, 100, "view", datetime(2024, 5, 1, 12, 0)),  # 14:00+02:00 is 12:00 UTC; rating 2.5: view only
        (10, 101, "click", datetime(2024, 5, 1, 13, 0)),  # 1714568400 unix seconds; kind kept as is
        (11, 101, "view", datetime(2024, 5, 2, 9, 30)),  # neither rating nor kind: implicit positive
        (11, 101, "like", datetime(2024, 5, 2, 9, 30)),
    ]
    items_ = items_by_id(engine)
    assert (items_[100].name, items_[100].category, items_[100].type) == ("Acme, Inc.", "fintech", "seed")
    assert items_[100].created_at == datetime(2024, 4, 1)
    assert (items_[101].category, items_[101].field, items_[101].type) == ("health", "none", "unknown")
    assert items_[101].created_at == datetime(2024, 5, 1, 13, 0)  # first interaction
    assert summary.positives == 2


# --- Non-empty databases -----------------------------------------------------------------------


def test_non_empty_database_is_refused_without_append_or_force(engine, ml100k) -> None:
    import_movielens(engine, ml100k)
    before = table_counts(engine)

    with pytest.raises(WorldExistsError, match="--append.*--force"):
        import_movielens(engine, ml100k)
    assert table_counts(engine) == before


def test_append_adds_new_ids_and_refuses_colliding_ones(engine, ml100k, tmp_path) -> None:
    import_movielens(engine, ml100k)
    before = table_counts(engine)
    with pytest.raises(ImportDataError, match="already exist"):
        import_movielens(engine, ml100k, append=True)
    assert table_counts(engine) == before

    other = write_ml100k(tmp_path / "more", [(50, 60, 5, ts(900))], [(60, "Later (1998)", "01-Feb-1998", [1])])
    import_movielens(engine, other, append=True)
    after = table_counts(engine)
    assert (after["users"], after["items"], after["interactions"]) == (4, 5, 11)
    with session_scope(engine) as s:
        assert get_setting(s, keys.CLOCK) == utc(ts(900)).isoformat()


def test_force_replaces_the_world(engine, ml100k, tmp_path) -> None:
    import_movielens(engine, ml100k)
    other = write_ml100k(tmp_path / "other", [(7, 8, 4, ts(50))], [(8, "Only (1990)", "01-Jan-1990", [8])])
    import_movielens(engine, other, force=True)

    counts = table_counts(engine)
    assert (counts["users"], counts["items"], counts["interactions"]) == (1, 1, 2)
    assert sorted(users_by_id(engine)) == [7]


def test_force_over_the_demo_world_removes_its_history_and_ground_truth(world_copy, ml100k) -> None:
    def truth_rows() -> int:
        with world_copy.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM world_truth")).scalar_one()

    assert truth_rows() > 0 and table_counts(world_copy)["interactions"] > 1000

    import_movielens(world_copy, ml100k, force=True)

    counts = table_counts(world_copy)
    assert (counts["users"], counts["items"], counts["interactions"]) == (3, 4, 9)
    assert truth_rows() == 0
    with session_scope(world_copy) as s:
        assert get_setting(s, keys.WORLD)["source"] == "ml-100k"


def test_a_failure_while_writing_rolls_back_the_wipe_and_every_insert(engine, ml100k, tmp_path,
                                                                      monkeypatch) -> None:
    import ranker.data.importing.writer as writer

    import_movielens(engine, ml100k)
    before = table_counts(engine)

    def boom(session):  # runs after the wipe and all inserts, inside the transaction
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "INSERT_BATCH", 2)
    monkeypatch.setattr(writer, "_refresh_settings", boom)
    other = write_ml100k(tmp_path / "other", [(7, 8, 4, ts(50)), (9, 8, 1, ts(60))],
                         [(8, "Only (1990)", "01-Jan-1990", [8])])
    with pytest.raises(RuntimeError, match="disk full"):
        import_movielens(engine, other, force=True)
    assert table_counts(engine) == before
    assert sorted(users_by_id(engine)) == [1, 2, 3]


# --- Bad input: file and line named, database unchanged ----------------------------------------


def _ml(tmp: Path, ratings=RATINGS, items=ITEMS, sep="\t") -> Path:
    return write_ml100k(tmp / "bad", ratings, items, sep=sep)


def _ml_bytes(tmp: Path, filename: str, content: bytes) -> Path:
    folder = _ml(tmp)
    (folder / filename).write_bytes(content)
    return folder


def _csv(tmp: Path, inter: str = CSV_INTER, items: str = CSV_ITEMS, inter_bytes: bytes | None = None):
    paths = write_csv(tmp / "bad", inter, items)
    if inter_bytes is not None:
        paths[0].write_bytes(inter_bytes)
    return paths


BAD_INPUTS = {
    # case: (make the import call, file name in the message, line number, words in the message)
    "comma-separated u.data": (
        lambda e, t: import_movielens(e, _ml(t, sep=",")), "u.data", 1, "comma-separated"),
    "rating above 5": (
        lambda e, t: import_movielens(e, _ml(t, RATINGS[:2] + [(2, 1, 6, ts(1))])), "u.data", 3, "out of range"),
    "rating 0": (
        lambda e, t: import_movielens(e, _ml(t, [(2, 1, 0, ts(1))])), "u.data", 1, "out of range"),
    "negative timestamp": (
        lambda e, t: import_movielens(e, _ml(t, RATINGS[:1] + [(2, 1, 4, -5)])), "u.data", 2, "before 1970"),
    "timestamp after 2100": (
        lambda e, t: import_movielens(e, _ml(t, [(2, 1, 4, 4_200_000_000)])), "u.data", 1, "after 2100"),
    "unknown item": (
        lambda e, t: import_movielens(e, _ml(t, RATINGS[:3] + [(2, 99, 4, ts(1))])), "u.data", 4,
        "item id '99' is not in"),
    "duplicate item id": (
        lambda e, t: import_movielens(e, _ml(t, items=ITEMS + [(2, "Again (1990)", "", [1])])), "u.item", 5,
        "duplicate item id '2' (first at line 2)"),
    "u.item id not an integer": (
        lambda e, t: import_movielens(e, _ml(t, items=ITEMS[:2] + [("unkonwn", "X (1990)", "", [1])])), "u.item", 3,
        "item id 'unkonwn' is not a positive integer id"),
    "u.user with a wrong delimiter": (
        lambda e, t: import_movielens(e, _ml_bytes(t, "u.user", b"1\t24\tM\ttechnician\t85711\n")), "u.user", 1,
        "tab-separated"),
    "csv not UTF-8": (
        lambda e, t: import_csv(e, *_csv(t, inter_bytes=b"user_id,item_id,timestamp\n1,100,5\n1,101,\xe9t\xe9\n")[:2]),
        "interactions.csv", 3, "not valid utf-8"),
    "csv rating not finite": (
        lambda e, t: import_csv(e, *_csv(t, inter="user_id,item_id,timestamp,rating\n10,100,5,inf\n")[:2]),
        "interactions.csv", 2, "out of range"),
    "csv unparseable timestamp": (
        lambda e, t: import_csv(e, *_csv(t, inter="user_id,item_id,timestamp\n10,100,5\n10,101,yesterday\n")[:2]),
        "interactions.csv", 3, "neither unix seconds nor an ISO 8601"),
    "csv ISO timestamp after 2100": (
        lambda e, t: import_csv(e, *_csv(t, inter="user_id,item_id,timestamp\n10,100,2150-01-01T00:00:00\n")[:2]),
        "interactions.csv", 2, "after 2100"),
    "csv unknown kind": (
        lambda e, t: import_csv(e, *_csv(t, inter="user_id,item_id,timestamp,kind\n10,100,5,buy\n")[:2]),
        "interactions.csv", 2, "kind 'buy'"),
    "csv empty user_id": (
        lambda e, t: import_csv(e, *_csv(t, inter="user_id,item_id,timestamp\n10,100,5\n,101,6\n")[:2]),
        "interactions.csv", 3, "user_id is empty"),
    "csv semicolon-separated": (
        lambda e, t: import_csv(e, *_csv(t, inter="user_id;item_id;timestamp\n10;100;5\n")[:2]),
        "interactions.csv", 1, "semicolon-separated"),
    "csv duplicate item": (
        lambda e, t: import_csv(e, *_csv(t, items="item_id,category\n100,a\n101,b\n100,c\n")[:2]),
        "items.csv", 4, "duplicate item id '100' (first at line 2)"),
    "recbole header without types": (
        lambda e, t: import_recbole(e, write_recbole(t / "rb", inter="user_id\titem_id\ttimestamp\n1\t242\t5\n")),
        "ml-100k.inter", 1, "name:type"),
    "recbole item file not UTF-8": (
        lambda e, t: import_recbole(e, _recbole_latin1_item(t)), "ml-100k.item", 3, "not valid utf-8"),
    "recbole interaction naming a missing item": (
        lambda e, t: import_recbole(e, write_recbole(t / "rb", inter=(
            f"user_id:token\titem_id:token\ttimestamp:float\n1\t242\t{ts(1)}\n1\t999\t{ts(2)}\n"))),
        "ml-100k.inter", 3, "item_id '999' is not in"),
    "recbole timestamp unkonwn, next to a dirty .item": (
        lambda e, t: import_recbole(e, _dirty_recbole_bad_timestamp(t)), "ml-100k.inter", 3,
        "timestamp 'unkonwn' is not a number of seconds since 1970"),
}


def _recbole_latin1_item(tmp: Path) -> Path:
    """RecBole files whose .item holds a latin-1 byte on line 3 (RecBole files are UTF-8)."""
    folder = write_recbole(tmp / "rb")
    path = folder / "ml-100k.item"
    path.write_bytes(path.read_bytes().replace(b"Confidential", "Confidentiàl".encode("latin-1")))
    return folder


def _dirty_recbole_bad_timestamp(tmp: Path) -> Path:
    """The dirty RecBole ml-100k files, plus a bad required value: a timestamp of 'unkonwn' on .inter line 3."""
    folder = write_recbole_ml100k(tmp / "rb")
    inter = folder / "ml-100k.inter"
    lines = inter.read_text(encoding="utf-8").splitlines()
    lines[2] = "\t".join([*lines[2].split("\t")[:3], "unkonwn"])
    inter.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_names_file_and_line_and_leaves_the_database_unchanged(case, engine, ml100k,
                                                                         tmp_path) -> None:
    import_movielens(engine, ml100k)  # something to lose
    before = table_counts(engine)
    run, filename, line, words = BAD_INPUTS[case]

    with pytest.raises(ImportDataError) as info:
        run(engine, tmp_path)

    message = str(info.value)
    assert filename in message and f"line {line}:" in message, message
    assert words.lower() in message.lower(), message
    assert table_counts(engine) == before


def test_missing_item_file_is_named(engine, tmp_path) -> None:
    folder = write_ml100k(tmp_path / "ml", RATINGS, ITEMS)
    (folder / "u.item").unlink()
    with pytest.raises(FileNotFoundError, match="u.item"):
        import_movielens(engine, folder)
    assert table_counts(engine)["interactions"] == 0


def test_cli_import_reports_bad_input_on_one_line_and_exits_2(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RANKER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    folder = write_ml100k(tmp_path / "ml", RATINGS[:1] + [(2, 1, 9, ts(1))], ITEMS)

    assert main(["import", "movielens", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and f"{folder / 'u.data'} line 2:" in err[-1]


def test_cli_import_then_refuses_a_second_import_without_flags(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RANKER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    folder = write_ml100k(tmp_path / "ml", RATINGS, ITEMS, USERS)

    assert main(["import", "movielens", str(folder), "--json"]) == 0
    assert '"interactions": 9' in capsys.readouterr().out
    assert main(["import", "movielens", str(folder)]) == 2
    assert "--append" in capsys.readouterr().err
    assert main(["import", "movielens", str(folder), "--force", "--json"]) == 0


# --- Dirty files: a bad optional value is read as missing, and counted --------------------------


def _edit(path: Path, line: int, column: int, value: str, sep: str, encoding: str = "utf-8") -> None:
    """Set field ``column`` of line ``line`` (1-based) of ``path`` to ``value``."""
    lines = path.read_text(encoding=encoding).splitlines()
    fields = lines[line - 1].split(sep)
    fields[column] = value
    lines[line - 1] = sep.join(fields)
    path.write_text("\n".join(lines) + "\n", encoding=encoding)


def _ml_edited(tmp: Path, filename: str, line: int, column: int, value: str, users=USERS) -> Path:
    folder = write_ml100k(tmp / "ml-100k", RATINGS, ITEMS, users)
    _edit(folder / filename, line, column, value, "|", "latin-1")
    return folder


def _ml1m_with_occupation(tmp: Path, code: str) -> Path:
    folder = tmp / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n2::1193::4::978298413\n")
    (folder / "movies.dat").write_text("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n")
    (folder / "users.dat").write_text(f"1::F::1::{code}::48067\n2::M::56::16::70072\n")
    return folder


OPTIONAL_DEFECTS = {
    # case: (make the files and import them, file, line, field, value, check what was written)
    "recbole ml-100k.item release_year unkonwn": (
        lambda e, t: import_recbole(e, write_recbole_ml100k(t / "rb")), "ml-100k.item", 268, "release_year",
        "unkonwn", lambda e: (
            len(items_by_id(e)) == 268
            and (items_by_id(e)[267].type, items_by_id(e)[267].created_at) == ("unknown", utc(ts(5)))
            and items_by_id(e)[268].created_at == datetime(1997, 1, 1))),
    "recbole .user age": (
        lambda e, t: import_recbole(e, write_recbole(t / "rb", user="user_id:token\tage:token\n196\tunkonwn\n"
                                                                   "186\t39\n")),
        "ml-100k.user", 2, "age", "unkonwn",
        lambda e: (users_by_id(e)[196].category, users_by_id(e)[186].category) == (None, "35-44")),
    "ml-100k u.item release date unkonwn": (
        lambda e, t: import_movielens(e, _ml_edited(t, "u.item", 2, 2, "unkonwn")), "u.item", 2, "release date",
        "unkonwn",  # the year then comes from the title; created_at is the first rating
        lambda e: (items_by_id(e)[2].type, items_by_id(e)[2].created_at) == ("1970s", utc(ts(100)))),
    "ml-100k u.item release date out of range": (
        lambda e, t: import_movielens(e, _ml_edited(t, "u.item", 4, 2, "24-Oct-2297")), "u.item", 4,
        "release date", "24-Oct-2297", lambda e: items_by_id(e)[4].created_at == utc(ts(500))),
    "ml-100k u.item genre flag": (
        lambda e, t: import_movielens(e, _ml_edited(t, "u.item", 4, 5 + 8, "x")), "u.item", 4,
        "genre flag Drama", "x", lambda e: (items_by_id(e)[4].category, items_by_id(e)[4].field) == ("Sci-Fi", "none")),
    "ml-100k u.user age": (
        lambda e, t: import_movielens(e, _ml_edited(t, "u.user", 2, 1, "unkonwn")), "u.user", 2, "age", "unkonwn",
        lambda e: (users_by_id(e)[2].category, users_by_id(e)[2].field) == (None, "other")),
    "ml-1m users.dat occupation code": (
        lambda e, t: import_movielens(e, _ml1m_with_occupation(t, "99")), "users.dat", 1, "occupation code", "99",
        lambda e: (users_by_id(e)[1].category, users_by_id(e)[1].field) == ("under-18", None)),
    "csv items created_at unkonwn": (
        lambda e, t: import_csv(e, *_csv(t, items=CSV_ITEMS.replace("2024-04-01", "unkonwn"))[:2]), "items.csv", 2,
        "created_at", "unkonwn", lambda e: items_by_id(e)[100].created_at == datetime(2024, 5, 1, 12, 0)),
    "csv items item_type": (
        lambda e, t: import_csv(e, *_csv(t, items="item_id,item_type\n100,item\n101,book\n")[:2]), "items.csv", 3,
        "item_type", "book", lambda e: items_by_id(e)[101].item_type == "item"),
    "csv users created_at": (
        lambda e, t: import_csv(e, *write_csv(t / "csv", CSV_INTER, CSV_ITEMS,
                                              "user_id,role,created_at\n10,user,yesterday\n11,user,\n")),
        "users.csv", 2, "created_at", "yesterday", lambda e: users_by_id(e)[10].created_at == datetime(2024, 5, 1, 12)),
}


@pytest.mark.parametrize("case", OPTIONAL_DEFECTS, ids=list(OPTIONAL_DEFECTS))
def test_a_bad_optional_value_is_read_as_missing_and_counted_with_its_line(case, engine, tmp_path) -> None:
    run, filename, line, field, value, written_as_missing = OPTIONAL_DEFECTS[case]

    summary = run(engine, tmp_path)

    [warning] = summary.warnings
    assert (Path(warning.file).name, warning.field, warning.count) == (filename, field, 1)
    assert warning.examples == [f"{warning.file}:{line}: {field}={value}"]
    assert written_as_missing(engine)


def test_an_empty_optional_value_is_missing_without_a_warning(engine, ml100k) -> None:
    summary = import_movielens(engine, ml100k)  # item 3 has no release date, as in the real u.item

    assert summary.warnings == []
    assert items_by_id(engine)[3].created_at == utc(ts(400))


def test_users_with_some_empty_attributes_are_imported_with_null_ones(engine, tmp_path) -> None:
    inter, items, users = write_csv(tmp_path / "csv", CSV_INTER, CSV_ITEMS,
                                    "user_id,category,field\n10,founder,\n11,,fintech\n")
    summary = import_csv(engine, inter, items, users)

    assert summary.warnings == []
    by_id = users_by_id(engine)
    assert [(by_id[u].category, by_id[u].field) for u in (10, 11)] == [("founder", None), (None, "fintech")]


def test_warnings_count_every_bad_value_of_a_field_and_keep_three_examples(engine, tmp_path) -> None:
    item = (f"{RECBOLE_ML100K_ITEM_HEADER}\n242\tKolya\tunkonwn\tComedy\n302\tL.A.\t19x7\tCrime\n"
            "303\tA\t0\tDrama\n304\tB\t1995.5\tDrama\n305\tC\t\tDrama\n306\tD\t1996\tDrama\n")
    folder = write_recbole(tmp_path / "rb", item=item)

    [warning] = import_recbole(engine, folder).warnings

    path = folder / "ml-100k.item"
    assert warning.count == 4  # the empty year of line 6 is missing, not bad
    assert warning.examples == [f"{path}:2: release_year=unkonwn", f"{path}:3: release_year=19x7",
                                f"{path}:4: release_year=0"]
    assert warning.message() == f"release_year: 4 bad values read as missing, e.g. {'; '.join(warning.examples)}"
    assert items_by_id(engine)[306].type == "1990s"


def test_cli_import_prints_one_warning_line_per_field_and_the_json_summary_carries_them(
        tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RANKER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    folder = write_recbole_ml100k(tmp_path / "rb", user=(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "196\tunkonwn\tM\twriter\t55105\n186\t-4\tF\texecutive\t00000\n"))
    item, user = folder / "ml-100k.item", folder / "ml-100k.user"
    expected = [
        f"warning: release_year: 1 bad value read as missing: {item}:268: release_year=unkonwn",
        f"warning: age: 2 bad values read as missing: {user}:2: age=unkonwn; {user}:3: age=-4",
    ]

    assert main(["import", "recbole", str(folder), "--json"]) == 0
    out, err = capsys.readouterr()
    warnings = json.loads(out)["warnings"]
    assert [(w["file"], w["field"], w["count"]) for w in warnings] == [
        (str(item), "release_year", 1), (str(user), "age", 2)]
    assert warnings[0]["examples"] == [f"{item}:268: release_year=unkonwn"]
    assert [ln for ln in err.splitlines() if ln.startswith("warning:")] == expected

    assert main(["import", "recbole", str(folder), "--force"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("replaced the database with recbole")
    assert [ln for ln in err.splitlines() if ln.startswith("warning:")] == expected


def test_cli_bad_required_value_in_dirty_files_aborts_on_one_line_and_writes_nothing(
        tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RANKER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    assert main(["import", "movielens", str(write_ml100k(tmp_path / "ml", RATINGS, ITEMS, USERS))]) == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    before = table_counts(engine)
    folder = _dirty_recbole_bad_timestamp(tmp_path)
    capsys.readouterr()

    assert main(["import", "recbole", str(folder), "--force"]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {folder / 'ml-100k.inter'} line 3: timestamp 'unkonwn' is not a number of seconds "
                   "since 1970"]
    assert table_counts(engine) == before
    assert sorted(users_by_id(engine)) == [1, 2, 3]
    engine.dispose()


# --- PostgreSQL -----------------------------------------------------------------------------------


def _drop_all(engine: Engine) -> None:
    from ranker.data.schema import Base

    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.mark.postgres
def test_postgres_import_is_atomic_and_later_rows_get_fresh_ids(pg_url, ml100k, tmp_path) -> None:
    engine = make_engine(pg_url)
    _drop_all(engine)  # a clean slate in the shared test database
    try:
        import_movielens(engine, ml100k)
        before = table_counts(engine)
        bad = write_ml100k(tmp_path / "bad", RATINGS[:1] + [(2, 99, 4, ts(1))], ITEMS)
        with pytest.raises(ImportDataError, match="u.data line 2"):
            import_movielens(engine, bad, force=True)
        assert table_counts(engine) == before

        with session_scope(engine) as s:  # a user created later by the platform, without an id
            s.add(User(name="new", role="user", created_at=datetime(2024, 1, 1)))
        assert max(users_by_id(engine)) == 4
        df = interactions(engine)
        assert df["created_at"].is_monotonic_increasing and len(df) == 9
    finally:
        _drop_all(engine)
        engine.dispose()


@pytest.mark.postgres
def test_postgres_imports_dirty_recbole_files_with_null_attributes(pg_url, tmp_path) -> None:
    engine = make_engine(pg_url)
    _drop_all(engine)
    try:
        folder = write_recbole_ml100k(tmp_path / "rb", user="user_id:token\tage:token\n196\tunkonwn\n186\t39\n")
        summary = import_recbole(engine, folder)

        assert [(w.field, w.count) for w in summary.warnings] == [("release_year", 1), ("age", 1)]
        assert (users_by_id(engine)[196].category, users_by_id(engine)[186].category) == (None, "35-44")
        assert items_by_id(engine)[267].type == "unknown"
    finally:
        _drop_all(engine)
        engine.dispose()


def test_cli_force_import_over_a_trained_world_leaves_no_stale_active_copy(served, ml100k, capsys) -> None:
    from ranker.cli.main import main
    from ranker.rank import registry

    assert registry.active_path().exists() and registry.active_version(served) is not None
    assert main(["import", "movielens", str(ml100k), "--force", "--json"]) == 0
    assert registry.active_version(served) is None
    assert not registry.active_path().exists()  # the model of the old world is not a tool's "active" model
