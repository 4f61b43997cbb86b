"""Options that `curate run` and `curate submit` share, declared once (typer only)."""

from __future__ import annotations

from typing import Annotated

import typer

Pipeline = Annotated[str, typer.Option(help="Bundled pipeline name or a YAML path.")]
Stage = Annotated[str, typer.Option(help="download | score | filter | patch | all")]
Inputs = Annotated[
    list[str] | None,
    typer.Option(
        "--input", help="Replace the pipeline's sources: Parquet file/folder/glob, or folder:PATH."
    ),
]
Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config field: key.sub=value.")
]
