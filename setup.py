"""Only what pyproject.toml cannot say: conf/ stays at the repository's top level (the layout users expect)
and ships inside the wheel as the package memos_lab.conf, found through importlib.resources, so an editable
install and a wheel find their configs the same way."""

from setuptools import find_namespace_packages, find_packages, setup

config_groups = [f"memos_lab.conf.{group}" for group in find_namespace_packages(where="conf")]
setup(
    packages=[*find_packages(include=["memos_lab", "memos_lab.*"]), "memos_lab.conf", *config_groups],
    package_dir={"memos_lab.conf": "conf"},
)
