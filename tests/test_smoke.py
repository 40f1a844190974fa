def test_import():
    import medcurate.pipelines.cli  # noqa: F401
