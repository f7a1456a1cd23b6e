import nas


def test_every_public_name_resolves():
    assert sorted(nas.__all__) == sorted(nas._EXPORTS)
    for name in nas.__all__:
        assert getattr(nas, name).__name__ == name
