"""Training-free quality levers folded into the table (SIF weighting, centring, components).

Interface used by the extraction CLI (extract/cli.py):
    add_arguments(parser)            adds --weighting, --sif-a, --freq, --corpus, ... to the CLI
    apply(checkpoint, args) -> None  adds token_weights / center / components tensors to
                                     checkpoint.tensors and fills checkpoint.manifest.postprocess
"""

from __future__ import annotations

import argparse

from zeroth.checkpoint import Checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("quality (folded into the table)")
    group.add_argument("--weighting", choices=["none"], default="none")


def apply(checkpoint: Checkpoint, args: argparse.Namespace) -> None:
    return None
