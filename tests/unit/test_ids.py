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


def test_derived_ids_are_the_uuid5_of_their_parts():
    """Ids derived before and after the faster computation are the same ids (they are stored keys)."""
    import uuid

    from hypothesis import given
    from hypothesis import strategies as st

    @given(st.lists(st.text(), min_size=1, max_size=4))
    def same(parts: list[str]) -> None:
        assert derived_id("x", *parts) == f"x_{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join(parts)).hex}"

    same()
