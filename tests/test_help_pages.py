"""The help pages of web/docs/ (the frontend's node help panel reads /extensions/<pack>/docs/<node id>.md): one per
node, up to date with the node's description and tooltips, with an example and the official setting.
The real server serving them is checked in test_cli_host.py; the frontend showing them in test_browser.py."""

from pathlib import Path

from diffbir_cli import help_pages

REPO = Path(__file__).resolve().parent.parent


def test_every_node_has_an_up_to_date_help_page(comfy_host):
    package = comfy_host.extension_module.__name__ + "."
    ours = sorted(name for name, cls in comfy_host.node_classes.items() if cls.__module__.startswith(package))
    assert sorted(p.stem for p in help_pages.DOCS_DIR.glob("*.md")) == ours == sorted(help_pages.EXTRA)
    for node_id, text in help_pages.pages(comfy_host.node_info).items():
        assert (help_pages.DOCS_DIR / f"{node_id}.md").read_text(encoding="utf-8") == text, \
            f"web/docs/{node_id}.md is out of date: run python -m diffbir_cli.help_pages"


def test_a_page_names_every_input_and_output_and_has_each_section(comfy_host):
    for node_id in help_pages.EXTRA:
        info = comfy_host.node_info(node_id)
        text = (help_pages.DOCS_DIR / f"{node_id}.md").read_text(encoding="utf-8")
        assert text.startswith(f"# {info['display_name']}\n\n{help_pages.plain(info['description'])}\n")
        for heading in ("## Inputs", "## Outputs", "## Example", "## Official setting"):
            assert f"\n{heading}\n" in text, (node_id, heading)
        for section in ("required", "optional"):
            for name, spec in (info["input"].get(section) or {}).items():
                assert f"**`{name}`**" in text and help_pages.plain(spec[1]["tooltip"]) in text, (node_id, name)
        for name in info["output_name"]:
            assert f"**`{name}`**" in text, (node_id, name)
        example, official = help_pages.EXTRA[node_id]
        assert len(example) > 60 and len(official) > 60 and "`" in official  # names the official options


def test_the_pack_serves_web_and_the_registry_archive_ships_it():
    """WEB_DIRECTORY points at web/ (ComfyUI serves it at /extensions/<pack folder>/), and .comfyignore's allow-list
    keeps web/ and subgraphs/ in the registry archive."""
    init = (REPO / "__init__.py").read_text(encoding="utf-8")
    assert 'WEB_DIRECTORY = "./web"' in init and (REPO / "web" / "docs").is_dir()
    allowed = (REPO / ".comfyignore").read_text(encoding="utf-8").splitlines()
    assert "!/web/" in allowed and "!/subgraphs/" in allowed
