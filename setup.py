"""Build description for pybuild (packaging/debian) and pip.

The version is read from pvezfsha/__init__.py; debian/changelog carries the
same one (tests/test_packaging.py checks they agree).
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("pvezfsha/__init__.py").read_text()).group(1)

setup(
    name="pvezfsha",
    version=VERSION,
    description="Make a Proxmox container's local ZFS datasets follow it across nodes",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["pvezfsha", "pvezfsha.*"]),
    package_data={"pvezfsha._vendor": ["LICENSE.inotify_simple"]},
    # A plain script, not a console_scripts entry point: see its comment.
    scripts=["packaging/bin/pvezfsha"],
)
