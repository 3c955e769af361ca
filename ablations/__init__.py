"""The shipped study files (*.toml): a package only so that they install beside `bench`.

Read them through `bench.studies` (`studies_dir()`, `list_studies()`, `load_study(name)`).
"""
