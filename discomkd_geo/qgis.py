"""Install the QGIS plugin into a QGIS profile, or package it for the plugin manager.

The plugin (:mod:`discomkd_geo.qgis_plugin`) is plain files that import only the standard
library and QGIS; it runs the ``discomkd-geo`` executable of this environment, whose
path :func:`install` records beside it (``install.json``) as the default of the
provider's setting.
"""

import json
import os
import shutil
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

from .errors import InputFileError, OutputError
from .files import atomic_dir, atomic_path

#: The plugin's directory name under ``<profile>/python/plugins``.
PLUGIN_NAME = "discomkd_geo_qgis"
#: Files of :mod:`discomkd_geo.qgis_plugin` that make up the plugin.
PLUGIN_FILES = ("metadata.txt", "__init__.py", "plugin.py", "provider.py", "algorithms.py",
                "runner.py")
#: Written beside the plugin: the executable its algorithms run by default.
SETTINGS_FILE = "install.json"


def default_profile_dir(platform: str = sys.platform) -> Path:
    """QGIS 3's ``default`` user profile on this operating system."""
    if platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "QGIS" / "QGIS3" / "profiles" / "default"


def find_executable() -> str:
    """The ``discomkd-geo`` of this environment (beside its Python), else on the PATH.

    Raises:
        InputFileError: no ``discomkd-geo`` executable is found.
    """
    scripts = Path(sys.executable).parent
    for name in ("discomkd-geo", "discomkd-geo.exe"):
        if (scripts / name).is_file():
            return str(scripts / name)
    found = shutil.which("discomkd-geo")
    if found is None:
        raise InputFileError("discomkd-geo", "executable not found beside "
                             f"{sys.executable} or on the PATH; pass executable=",
                             param="executable")
    return found


def check_executable(executable: str) -> str:
    """``executable`` as an absolute path, once it is a file that can run.

    A bare name is looked up on the PATH, as a shell would. QGIS runs what is recorded
    from its own directory, so it is recorded absolute.

    Raises:
        InputFileError: no such file, or not executable.
    """
    found = shutil.which(executable)
    if found is None:
        problem = "is not executable" if Path(executable).is_file() else "not found"
        raise InputFileError(executable, f"{problem}; pass executable= the discomkd-geo the "
                                         "plugin's algorithms should run",
                             param="executable")
    return os.path.abspath(found)


def plugin_contents(executable: str | None = None) -> dict[str, bytes]:
    """The plugin's files by name (with its settings if an executable is given)."""
    source = files("discomkd_geo.qgis_plugin")
    contents = {name: source.joinpath(name).read_bytes() for name in PLUGIN_FILES}
    if executable is not None:
        contents[SETTINGS_FILE] = json.dumps({"executable": executable}).encode()
    return contents


def enable_plugin(profile: Path) -> Path:
    """Mark the plugin enabled in the profile's ``QGIS/QGIS3.ini`` (QGIS reads it at start).

    Only the ``[PythonPlugins]`` entry is added or changed; the rest of the file is kept.
    """
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    lines = ini.read_text().splitlines() if ini.exists() else []
    entry = f"{PLUGIN_NAME}=true"
    if "[PythonPlugins]" not in lines:
        lines += ["", "[PythonPlugins]", entry]
    else:
        start = lines.index("[PythonPlugins]") + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")),
                   len(lines))
        keep = [line for line in lines[start:end] if not line.startswith(f"{PLUGIN_NAME}=")]
        lines[start:end] = [entry, *keep]
    with atomic_path(ini, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines).lstrip("\n") + "\n")
    return ini


def install(profile_dir: str | os.PathLike[str] | None = None, executable: str | None = None,
            overwrite: bool = False) -> Path:
    """Write the plugin into a QGIS profile and enable it.

    Args:
        profile_dir: the QGIS profile (default: :func:`default_profile_dir`).
        executable: the ``discomkd-geo`` the algorithms run (default:
            :func:`find_executable`).
        overwrite: replace an installed copy (an upgrade).

    Returns:
        The plugin's directory.

    Raises:
        OutputExistsError: the plugin is installed and ``overwrite`` is false.
        OutputError: the profile (or a directory above it) is a file.
        InputFileError: the executable is missing or cannot run, or none is found.
    """
    profile = Path(profile_dir) if profile_dir else default_profile_dir()
    executable = check_executable(executable) if executable else find_executable()
    existing = next(p for p in (profile, *profile.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        where = "" if existing == profile else f" ({existing} is one)"
        raise OutputError(profile, f"is a file{where}, not a QGIS profile directory; pass "
                                   "profile_dir= a profile's directory", param="profile_dir")
    target = profile / "python" / "plugins" / PLUGIN_NAME
    with atomic_dir(target, overwrite=overwrite) as tmp:
        for name, content in plugin_contents(executable).items():
            (tmp / name).write_bytes(content)
    enable_plugin(profile)
    return target


def package(output: str | os.PathLike[str], executable: str | None = None,
            overwrite: bool = False) -> Path:
    """Zip the plugin for QGIS's plugin manager ("Install from ZIP").

    Args:
        output: the ``.zip`` to write.
        executable: an executable to record as the default (else the plugin looks for
            ``discomkd-geo`` on the PATH; the setting can name it).
        overwrite: replace an existing file.
    """
    output = Path(output)
    with atomic_path(output, overwrite=overwrite) as tmp, \
            zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in plugin_contents(executable).items():
            archive.writestr(f"{PLUGIN_NAME}/{name}", content)
    return output
