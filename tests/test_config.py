from __future__ import annotations

import pytest

from curation.config import ConfigError, load_pipeline, source_from_input


def test_bundled_pipelines_load():
    demo = load_pipeline("demo")
    assert demo.sources[0].kind == "laion" and demo.sources[0].serve
    paper = load_pipeline("million-ird")
    assert paper.download.min_side == 1024
    assert paper.patch.size == 512 and paper.patch.max_flat_fraction == 0.5
    assert paper.score.metrics == ["niqe", "brisque", "nima"] and paper.score.require_all_metrics


def test_set_overrides_any_field():
    cfg = load_pipeline(
        "demo", ["download.min_side=512", "filter.max_niqe=6.5", "sources.0.name=x"]
    )
    assert (
        cfg.download.min_side == 512 and cfg.filter.max_niqe == 6.5 and cfg.sources[0].name == "x"
    )


def test_unknown_key_names_key_and_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: p\nsources: [{name: a, kind: folder, path: x}]\ndownload: {min_sid: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(str(bad))
    assert "download.min_sid: unknown key" in str(err.value) and str(bad) in str(err.value)


def test_bad_override_is_a_clear_error():
    with pytest.raises(ConfigError, match="download.threads"):
        load_pipeline("demo", ["download.threads=many"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_pipeline("demo", ["patch.sise=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_pipeline("demo", ["patch.size"])


def test_unknown_pipeline_lists_bundled_ones():
    with pytest.raises(ConfigError, match="demo"):
        load_pipeline("nope")


def test_input_spec():
    assert source_from_input("folder:/data/DIV2K_train_HR").kind == "folder"
    src = source_from_input("urls.parquet")
    assert src.kind == "laion" and src.path[0].endswith("urls.parquet")
