"""Dependencies point one way: the project package (testizer_funnels/) configures, the
apps hold the domain code. No module of an app imports the project package; the apps
reach the project's configuration through django.conf.settings only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("funnels", "reports")
PROJECT = "testizer_funnels"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _app_modules() -> list[Path]:
    return sorted(
        path for app in APPS for path in (ROOT / app).rglob("*.py")
        if "tests" not in path.relative_to(ROOT).parts
    )


def test_no_app_module_imports_the_project_package():
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _app_modules()
        for line, module in _imported_modules(path)
        if module == PROJECT or module.startswith(PROJECT + ".")
    ]
    assert offenders == []


def test_the_scan_sees_the_apps_and_would_see_an_offender(tmp_path):
    # The scan is only as good as what it reads: the apps' modules, and this kind of line.
    assert {"admin.py", "routers.py", "admin_site.py", "views.py"} <= {
        p.name for p in _app_modules()
    }
    module = tmp_path / "offender.py"
    module.write_text("from testizer_funnels.routers import MODX_ALIAS\n", encoding="utf-8")
    assert (1, "testizer_funnels.routers") in _imported_modules(module)


def test_the_job_services_do_not_import_the_one_off_adoption_tools():
    services = sorted((ROOT / "funnels" / "services").rglob("*.py"))
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in services
        for line, module in _imported_modules(path)
        if module.startswith("funnels.adoption")
    ]
    assert services and offenders == []
