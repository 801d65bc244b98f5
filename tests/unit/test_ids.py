from services.runtime.ids import derived_id, new_id, uuid7


def test_uuid7_is_version_7_and_time_ordered():
    ids = [uuid7() for _ in range(1000)]
    assert all(u.version == 7 for u in ids)
    assert [u.int >> 80 for u in ids] == sorted(u.int >> 80 for u in ids)


def test_new_ids_are_unique_and_prefixed():
    ids = {new_id("ord") for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(i.startswith("ord_") for i in ids)


def test_derived_ids_are_deterministic():
    assert derived_id("ord", "key-1") == derived_id("ord", "key-1") != derived_id("ord", "key-2")
