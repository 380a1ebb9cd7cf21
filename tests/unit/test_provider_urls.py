"""What Airflow's Providers page links to, read the way Airflow reads it (installed metadata)."""

from __future__ import annotations

from importlib.metadata import distribution

DIST = "airflow-provider-nanobanana"


def _documentation_url() -> str | None:
    for entry in distribution(DIST).metadata.get_all("Project-URL") or []:
        name, _, url = entry.partition(",")
        if name.strip().lower() == "documentation":
            return url.strip()
    return None


def test_the_package_declares_where_its_documentation_is():
    url = _documentation_url()
    assert url is not None, "pyproject.toml [project.urls] has no Documentation entry"
    assert url.startswith("https://")
    assert "airflow.apache.org" not in url  # Airflow's default: a page that does not exist for us


def test_airflows_providers_manager_reports_it_and_loads_the_page_plugin():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    info = manager.providers[DIST]
    # 3.1.8 keeps the space after the comma (" https://..."); a browser strips it from an href.
    assert info.data["documentation-url"].strip() == _documentation_url()
    manager.initialize_providers_plugins()
    plugins = {p.name: p.plugin_class for p in manager.plugins}
    assert plugins.get("nanobanana") == "airflow_provider_nanobanana.request_page.NanoBananaPlugin"
